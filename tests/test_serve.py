"""`cadenza serve` against a live server on 127.0.0.1, through the `openai` client and raw HTTP.

Speech runs a tiny random model (its audio is noise, which protocol tests do not mind); requests are a few
decode steps long. Music runs the shipped generator with a prompt holding both sections (no corpus lookup)
and a few dozen tokens.
"""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import mido
import numpy as np
import openai
import pytest
import soundfile as sf

from cadenza.serve import ServerConfig, create_app
from cadenza.serve.background import serve_in_background
from cadenza.serve.speech_engine import HiggsAudioServeEngine

STEPS = 29  # decode steps per test request: 29 - 8 (delay) - 1 = 20 frames of 960 samples at 24 kHz, 2 words
SAMPLES = (STEPS - 9) * 960
RATE = 24000
SHORT = {"max_new_tokens": STEPS, "seed": 1}
LONG = 3000  # decode steps of a request that must still be running a moment later
# One client for the plain HTTP calls: httpx waits only 5 s by default, too short for a loaded CI machine.
http = httpx.Client(timeout=60)


@pytest.fixture(scope="module")
def engine(tiny_speech_model) -> HiggsAudioServeEngine:
    return HiggsAudioServeEngine(tiny_speech_model)


@pytest.fixture(scope="module")
def url(engine, tmp_path_factory):
    config = ServerConfig(voices_dir=tmp_path_factory.mktemp("voices"), max_new_tokens=LONG, max_body_bytes=2 << 20,
                          max_voice_bytes=1 << 20, max_voice_seconds=10.0, max_queue=8, max_batch=4)
    with serve_in_background(create_app(config, engine=engine)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url) -> openai.OpenAI:
    # Generous: on a loaded 2-core CI machine the first librosa time stretch alone took over a minute.
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


def _speech(client, fmt: str = "wav", **extra) -> bytes:
    return client.audio.speech.create(model="tts-1", voice="joe", input="Hello there.", response_format=fmt,
                                      extra_body={**SHORT, **extra}).content


def _clip(seconds: float, rate: int = 16000, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format=fmt)
    return buffer.getvalue()


def _ab_midi() -> bytes:
    """A short MIDI with an 'A' and a 'B' section marker (a prompt for both sections)."""
    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    for letter, base in (("A", 60), ("B", 67)):
        track.append(mido.MetaMessage("marker", text=letter, time=0))
        for k in range(12):
            track.append(mido.Message("note_on", note=base + k % 5, velocity=80, time=0))
            track.append(mido.Message("note_off", note=base + k % 5, time=240))
    buffer = io.BytesIO()
    mid.save(file=buffer)
    return buffer.getvalue()


def _ok(url: str) -> None:
    """The server still answers a good request after a bad one."""
    response = http.post(f"{url}/v1/audio/speech", json={"input": "Still here.", "voice": "slt", "response_format": "pcm",
                                                        **SHORT}, timeout=60)
    assert response.status_code == 200 and len(response.content) == 2 * SAMPLES


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    return error


def test_models_health_and_metrics(url, client):
    assert {m.id for m in client.models.list()} == {"higgs-audio", "staria"}
    assert http.get(f"{url}/health").json()["status"] == "ok"
    _speech(client, "pcm")
    # A streamed answer is counted once its last byte has gone out, which may be just after the client read it.
    for _ in range(50):
        metrics = http.get(f"{url}/metrics").text
        if 'route="/v1/audio/speech",status="200"' in metrics:
            break
        time.sleep(0.1)
    for name in ("cadenza_requests_total", "cadenza_request_seconds", "cadenza_time_to_first_audio_seconds",
                 "cadenza_audio_seconds_total", 'cadenza_queue_depth{queue="speech"}'):
        assert name in metrics
    assert 'route="/v1/audio/speech",status="200"' in metrics


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus"])
def test_speech_in_every_container_format(client, fmt):
    audio, rate = sf.read(io.BytesIO(_speech(client, fmt)))
    assert rate == RATE
    if fmt == "mp3":  # the encoder's delay and padding add a few frames of its own
        assert SAMPLES <= len(audio) <= SAMPLES + 4 * 1152
    else:  # the whole clip, up to its last sample: no truncated opus ending
        assert len(audio) == SAMPLES


def test_streamed_pcm_arrives_in_chunks_and_equals_the_whole(client):
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="joe", input="Hello there.", response_format="pcm", extra_body=SHORT) as response:
        assert response.headers["content-type"] == "audio/pcm"
        chunks = list(response.iter_bytes(chunk_size=None))
    whole = _speech(client, "pcm", stream=False)
    assert len(chunks) > 1
    assert b"".join(chunks) == whole and len(whole) == 2 * SAMPLES


def test_sse_speech_events(url):
    body = {"input": "Hello there.", "voice": "joe", "response_format": "pcm", "stream_format": "sse", **SHORT}
    with http.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) > 1 and events[-1]["type"] == "speech.audio.done"
    assert sum(len(base64.b64decode(e["audio"])) for e in deltas) == 2 * SAMPLES
    assert events[-1]["usage"]["output_tokens"] == STEPS


def test_long_text_is_spoken_to_the_end(url, engine, never_stops):
    steps = 49  # 40 frames: 4 words at a reading pace
    app = create_app(ServerConfig(chunk_words=4, max_new_tokens=steps), engine=engine)
    text = "One two three four. Five six seven eight. Nine ten eleven twelve."
    with serve_in_background(app) as base:
        response = http.post(f"{base}/v1/audio/speech", json={"input": text, "voice": "joe", "response_format": "pcm"},
                              timeout=60)
        assert response.status_code == 200
        assert len(response.content) == 3 * 2 * (steps - 9) * 960  # three chunks of four words, each said
        # fewer steps than chunk_words need: shorter chunks, never a cut (six of two words)
        response = http.post(f"{base}/v1/audio/speech", json={"input": text, "voice": "joe", "response_format": "pcm",
                                                               **SHORT}, timeout=60)
        assert response.status_code == 200 and len(response.content) == 6 * 2 * SAMPLES


def test_speed_stretches_the_audio(client):
    audio, _ = sf.read(io.BytesIO(_speech(client, "wav", speed=2.0)))
    assert abs(len(audio) - SAMPLES / 2) < 0.05 * SAMPLES


def test_voices_upload_speak_delete(url, client):
    names = {v["id"] for v in http.get(f"{url}/v1/audio/voices").json()["data"]}
    assert {"joe", "slt"} <= names
    files = {"file": ("me.wav", _clip(1.5, 16000), "audio/wav")}
    response = http.post(f"{url}/v1/audio/voices", data={"name": "me_1", "transcript": "A short clip."}, files=files)
    assert response.status_code == 201, response.text
    assert response.json()["type"] == "uploaded"
    voices = http.get(f"{url}/v1/audio/voices").json()["data"]
    assert {"id": "me_1", "name": "me_1", "object": "voice", "type": "uploaded", "transcript": "A short clip."} in voices
    audio = client.audio.speech.create(model="tts-1", voice="me_1", input="Hi.", response_format="pcm", extra_body=SHORT)
    assert len(audio.content) == 2 * SAMPLES
    assert http.delete(f"{url}/v1/audio/voices/me_1").json()["deleted"] is True
    _error(http.delete(f"{url}/v1/audio/voices/me_1"), 404)
    _error(http.post(f"{url}/v1/audio/speech", json={"input": "Hi.", "voice": "me_1"}), 400)


@pytest.mark.parametrize("name, transcript, file, status, code", [
    ("../etc", "words", ("a.wav", _clip(1.0)), 400, "invalid_voice_name"),
    ("joe", "words", ("a.wav", _clip(1.0)), 409, "voice_exists"),
    ("x", "words", ("a.wav", b"this is not audio at all"), 400, "invalid_audio"),
    ("x", "words", ("a.flac", _clip(12.0, 8000, "FLAC")), 400, "invalid_audio_duration"),
    ("x", "words", ("a.wav", _clip(0.1)), 400, "invalid_audio_duration"),
    ("x", "   ", ("a.wav", _clip(1.0)), 400, "invalid_transcript"),
    ("x", "words", ("a.wav", b"RIFF" + bytes(1_100_000)), 413, "file_too_large"),
])
def test_bad_voice_uploads_are_refused(url, name, transcript, file, status, code):
    response = http.post(f"{url}/v1/audio/voices", data={"name": name, "transcript": transcript},
                          files={"file": (*file, "application/octet-stream")})
    assert _error(response, status)["code"] == code
    assert "x" not in {v["id"] for v in http.get(f"{url}/v1/audio/voices").json()["data"]}


def test_chat_completion_clones_input_audio(client):
    reference = base64.b64encode(_clip(1.0)).decode()
    messages = [{"role": "user", "content": "What the reference says."},
                {"role": "assistant", "content": [{"type": "input_audio", "input_audio": {"data": reference, "format": "wav"}}]},
                {"role": "user", "content": "Say this."}]
    completion = client.chat.completions.create(model="higgs-audio", modalities=["text", "audio"],
                                                audio={"voice": "joe", "format": "wav"}, messages=messages,
                                                extra_body={"max_completion_tokens": STEPS, "seed": 1})
    audio = completion.choices[0].message.audio
    assert audio.transcript == "Say this."
    wav, rate = sf.read(io.BytesIO(base64.b64decode(audio.data)))
    assert rate == RATE and len(wav) == SAMPLES
    assert completion.usage.completion_tokens == STEPS


def test_chat_completion_streams_pcm16_deltas(client):
    stream = client.chat.completions.create(model="higgs-audio", modalities=["text", "audio"], stream=True,
                                            audio={"voice": "slt", "format": "pcm16"},
                                            messages=[{"role": "user", "content": "Stream me."}],
                                            extra_body={"max_completion_tokens": STEPS})
    pieces, finish = [], None
    for chunk in stream:
        audio = getattr(chunk.choices[0].delta, "audio", None)
        if audio and audio.data:
            pieces.append(base64.b64decode(audio.data))
        finish = chunk.choices[0].finish_reason or finish
    assert len(pieces) > 1 and sum(map(len, pieces)) == 2 * SAMPLES and finish == "stop"


@pytest.mark.parametrize("body, status, code", [
    (b'{"input": "Hello", "voice": ', 400, "invalid_json"),
    ({"voice": "joe"}, 400, "invalid_value"),
    ({"input": "", "voice": "joe"}, 400, "empty_input"),
    ({"input": "word " * 1000, "voice": "joe"}, 400, "input_too_long"),
    ({"input": "Hi.", "voice": "nobody"}, 400, "voice_not_found"),
    ({"input": "Hi.", "voice": "joe", "model": "tts-9"}, 404, "model_not_found"),
    ({"input": "Hi.", "voice": "joe", "response_format": "aac"}, 400, "invalid_value"),
    ({"input": "Hi.", "voice": "joe", "speed": 10}, 400, "invalid_value"),
    ({"input": "Hi.", "voice": "joe", "max_new_tokens": 12}, 400, "input_cannot_be_said"),  # too few steps for a word
    (b"x" * (3 << 20), 413, "request_too_large"),
    ((b"x" * (1 << 16) for _ in range(48)), 413, "request_too_large"),  # chunked: no Content-Length
])
def test_bad_speech_requests_get_clear_4xx(url, body, status, code):
    if not isinstance(body, dict):
        response = http.post(f"{url}/v1/audio/speech", content=body, headers={"content-type": "application/json"})
    else:
        response = http.post(f"{url}/v1/audio/speech", json=body)
    assert _error(response, status)["code"] == code
    _ok(url)


@pytest.mark.parametrize("body, code", [
    ({"messages": [{"role": "user", "content": "Hi."}], "modalities": ["text"]}, None),
    ({"messages": [{"role": "user", "content": "Hi."}], "stream": True, "audio": {"format": "wav"}}, None),
    ({"messages": [{"role": "system", "content": "A room."}]}, "no_text"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%%"}}]},
                   {"role": "user", "content": "Hi."}]}, "invalid_base64"),
    ({"messages": [{"role": "user", "content": "Words."}, {"role": "assistant", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"not audio").decode()}}]},
        {"role": "user", "content": "Hi."}]}, "invalid_audio"),
])
def test_bad_chat_requests_get_clear_4xx(url, body, code):
    response = http.post(f"{url}/v1/chat/completions", json={"model": "higgs-audio", **body})
    assert _error(response, 400)["code"] == code
    _ok(url)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_stops_its_decoding(url, stream):
    def audio_seconds() -> float:
        line = next(l for l in http.get(f"{url}/metrics").text.splitlines() if l.startswith("cadenza_audio_seconds_total"))
        return float(line.split()[1])

    before = audio_seconds()
    body = {"input": "A long one.", "voice": "joe", "response_format": "pcm", "max_new_tokens": LONG, "stream": stream}
    if stream:
        with http.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=60) as response:
            next(response.iter_bytes())  # the first audio, then hang up
    else:
        with pytest.raises(httpx.ReadTimeout):  # the whole answer would take far longer: give up
            http.post(f"{url}/v1/audio/speech", json=body, timeout=httpx.Timeout(60, read=0.2))
    for _ in range(200):
        if http.get(f"{url}/health").json()["queue"]["speech"] == 0:
            break
        time.sleep(0.05)
    assert http.get(f"{url}/health").json()["queue"]["speech"] == 0
    assert audio_seconds() - before < (LONG - 9) / 25 / 2  # stopped well before its last step
    _ok(url)


def test_burst_of_requests_gets_only_200_or_503(url):
    """200 requests at once against a queue of 8: each is answered 200 or 503 (with Retry-After), never 500."""
    body = {"input": "Burst.", "voice": "joe", "response_format": "pcm", "max_new_tokens": STEPS}

    def post(_):
        response = http.post(f"{url}/v1/audio/speech", json=body)
        return response.status_code, response.headers.get("retry-after")

    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=200)) as http, ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(post, range(200)))
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 8
    assert all(retry and int(retry) >= 1 for status, retry in answers if status == 503)
    print(f"burst of 200: {statuses.count(200)} x 200, {statuses.count(503)} x 503")
    _ok(url)


def test_api_key_and_timeout(engine, never_stops, tmp_path):
    app = create_app(ServerConfig(api_key="sesame", voices_dir=tmp_path, timeout=0.5, max_new_tokens=LONG), engine=engine)
    with serve_in_background(app) as base:
        assert http.get(f"{base}/health").status_code == 200
        _error(http.get(f"{base}/v1/models"), 401)
        _error(http.get(f"{base}/v1/models", headers={"authorization": "Bearer wrong"}), 401)
        keyed = openai.OpenAI(base_url=f"{base}/v1", api_key="sesame", max_retries=0)
        assert {m.id for m in keyed.models.list()} == {"higgs-audio", "staria"}
        slow = {"input": "Too long to finish in half a second.", "voice": "joe", "max_new_tokens": LONG, "stream": False}
        response = http.post(f"{base}/v1/audio/speech", json=slow, headers={"x-api-key": "sesame"}, timeout=60)
        assert _error(response, 504)["code"] == "timeout"


def test_no_speech_model_answers_503(tmp_path):
    with serve_in_background(create_app(ServerConfig(voices_dir=tmp_path, speech=False))) as base:
        response = http.post(f"{base}/v1/audio/speech", json={"input": "Hi.", "voice": "joe"})
        assert _error(response, 503)["code"] == "model_not_loaded"
        assert {m["id"] for m in http.get(f"{base}/v1/models").json()["data"]} == {"staria"}


def test_music_generation_and_evaluation(url):
    body = {"form": "AB", "n": 1, "seed": 0, "max_tokens": 48, "prompt_midi_b64": base64.b64encode(_ab_midi()).decode(),
            "formats": ["mid", "wav", "png"]}
    response = http.post(f"{url}/v1/music/generations", json=body, timeout=300)
    assert response.status_code == 200, response.text
    piece = response.json()["data"][0]
    assert piece["sections"] == "AB" and piece["notes"] > 0
    assert base64.b64decode(piece["png_b64"]).startswith(b"\x89PNG")
    assert sf.info(io.BytesIO(base64.b64decode(piece["wav_b64"]))).duration > 0
    midi = base64.b64decode(piece["midi_b64"])
    assert midi.startswith(b"MThd")
    report = http.post(f"{url}/v1/music/evaluations", json={"midi_b64": piece["midi_b64"], "form": "AB"}, timeout=60)
    assert report.status_code == 200, report.text
    assert report.json()["requested_form"] == "AB" and "statistics" in report.json()


@pytest.mark.parametrize("route, body, code", [
    ("generations", {"form": "ABZ"}, "invalid_form"),
    ("generations", {"form": "AB", "prompt_midi_b64": base64.b64encode(b"RIFF....WAVE").decode()}, "invalid_midi"),
    ("generations", {"form": "AB", "prompt_midi_b64": "not base64!"}, "invalid_base64"),
    ("generations", {"form": "AB", "n": 50}, "invalid_value"),
    ("evaluations", {"midi_b64": base64.b64encode(b"MThd\x00\x00\x00\x06").decode()}, "invalid_midi"),
])
def test_bad_music_requests_get_clear_4xx(url, route, body, code):
    assert _error(http.post(f"{url}/v1/music/{route}", json=body), 400)["code"] == code
    _ok(url)
