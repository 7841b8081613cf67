"""HiggsAudioServeEngine and speak() end to end on a tiny random model with the shipped audio tokenizer:
seeding, batching, the delay pattern in generated output, streaming, cloning prompts, long form, eval tables."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from cadenza.higgs_audio.chatml import AudioContent, ChatMLSample, Message
from cadenza.higgs_audio.delay import build_delay_pattern
from cadenza.higgs_audio.engine import GenerationSettings, HiggsAudioServeEngine
from cadenza.higgs_audio.inputs import expand_sample
from cadenza.higgs_audio.prompt import expanded_length, system_message
from cadenza.higgs_audio.speak import (VOICES_DIR, Chunk, Reference, Speech, SpeechRequest, conversation, first_prompt,
                                       plan_chunks, speak, speak_batch, speak_stream, speakable_words, steps_to_say,
                                       voice_reference)
from cadenza.higgs_audio.text import SILENT_SYMBOLS, TextTokenizer
from cadenza.higgs_audio.tts_eval import CaseResult, aggregate, format_report

SENTENCES = ["Hello there.", "How are you today, my friend?", "It is a fine day for a walk in the park."]
N_Q, CODEBOOK = 8, 1024


@pytest.fixture(scope="module")
def engine(tiny_speech_model) -> HiggsAudioServeEngine:
    torch.set_num_threads(1)
    return HiggsAudioServeEngine(tiny_speech_model)


@pytest.fixture(scope="module")
def joe(engine) -> Reference:
    return voice_reference(engine, "joe")


@pytest.fixture(scope="module")
def slt(engine) -> Reference:
    return voice_reference(engine, "slt")


def _prompt(engine, text: str, references: dict | None = None, **request):
    return first_prompt(engine, SpeechRequest(text, dict(references or {}), **request))


def _settings(n: int, seed: int | None) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=n, seed=seed)


def _force_eos_at(engine, monkeypatch, column: int | None = None, everywhere: bool = False) -> None:
    """Patch the audio head: codebook 0 strongly prefers EOS at delayed `column` (call i of one request
    is column i), or BOS and EOS are strongly preferred by every codebook at every column."""
    original = engine.decoder.audio_logits
    calls = []

    def audio_logits(hidden):
        logits = original(hidden)
        if everywhere:
            logits[..., [CODEBOOK, CODEBOOK + 1]] = 1e4
        elif len(calls) == column:
            logits[..., 0, CODEBOOK + 1] = 1e4
        calls.append(1)
        return logits

    monkeypatch.setattr(engine.decoder, "audio_logits", audio_logits)


def _delayed_columns(deltas) -> np.ndarray:
    return np.stack([d.audio_tokens for d in deltas if d.audio_tokens is not None], axis=1)


def _turns(tokenizer: TextTokenizer, ids: list[int]) -> list[tuple[str, str]]:
    """(role, content) of every turn of a decoded prompt; the open assistant header gives content ''."""
    text = tokenizer.decode(ids)
    turns = []
    for part in text.split("<|start_header_id|>")[1:]:
        role, content = part.split("<|end_header_id|>\n\n", 1)
        turns.append((role, content.removesuffix("<|eot_id|>")))
    return turns


# ----------------------------------------------------------------------------------- seeding and batching


def test_transcript_pointer_walks_the_last_user_message(tmp_path, joe, monkeypatch, build_tiny_speech_model):
    engine = HiggsAudioServeEngine(build_tiny_speech_model(tmp_path / "model", transcript_pointer=True))
    prompt = _prompt(engine, SENTENCES[1], {0: joe})
    reading = engine._reading(prompt.input_ids)
    spoken = engine.tokenizer.decode(engine.tokenizer.encode(SENTENCES[1], spoken=True))
    assert engine.tokenizer.decode(reading).replace(" ", "") == "".join(c for c in spoken if c not in SILENT_SYMBOLS)
    fed = []
    step = engine.decoder.step
    monkeypatch.setattr(engine.decoder, "step", lambda *a, **k: fed.append(k["spoken_ids"].clone()) or step(*a, **k))
    # a pointer head that always moves one token: the first frame speaks the first token, then one more each
    monkeypatch.setattr(engine.decoder, "pointer_logits", lambda h: torch.tensor([[-1e4, 0.0, -1e4, -1e4]]).expand(len(h), -1))
    engine.generate_prompts([prompt], _settings(len(reading) + 5, seed=0))
    said = [int(s[0]) for s in fed]
    assert said == reading + [reading[-1]] * 4  # with columns 0, 1, ...; the last sampled column is not fed
    monkeypatch.undo()
    alone = engine.generate_prompts([prompt], _settings(20, seed=1))[0]
    batched = engine.generate_prompts([_prompt(engine, SENTENCES[0]), prompt], _settings(20, seed=1))[1]
    np.testing.assert_array_equal(alone.generated_audio_tokens, batched.generated_audio_tokens)



def test_same_seed_same_audio_other_seed_other_audio(engine):
    sample = ChatMLSample([system_message(), Message("user", "Hello there."),
                           Message("assistant", AudioContent(audio_url=str(VOICES_DIR / "joe.wav"))),
                           Message("user", "How are you today?")])
    a = engine.generate(sample, max_new_tokens=24, seed=3)
    b = engine.generate(sample, max_new_tokens=24, seed=3)
    c = engine.generate(sample, max_new_tokens=24, seed=4)
    assert a.generated_audio_tokens.shape[1] > 0 and a.audio is not None
    np.testing.assert_array_equal(a.generated_audio_tokens, b.generated_audio_tokens)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert not np.array_equal(a.generated_audio_tokens, c.generated_audio_tokens)
    assert a.usage["finish_reason"] == "length" and a.usage["completion_tokens"] == 24


def test_batch_gives_each_request_what_it_gets_alone(engine, joe):
    prompts = [_prompt(engine, SENTENCES[0]), _prompt(engine, SENTENCES[1], {0: joe}), _prompt(engine, SENTENCES[2])]
    assert len({len(p.input_ids) for p in prompts}) == 3  # left padding differs per row
    # Greedy picks: a random tiny model's probabilities are nearly uniform, so some sampled draws land between
    # two almost equal ones, which the float rounding of a batch vs a single row (~2e-7 in a logit) can swap.
    # Anything leaking between rows moves the logits far more than that.
    settings = [replace(_settings(n, seed), temperature=0.0) for n, seed in ((20, 11), (30, 12), (25, 13))]
    batched = engine.generate_prompts(prompts, settings)
    for prompt, s, b in zip(prompts, settings, batched):
        alone = engine.generate_prompts([prompt], s)[0]
        np.testing.assert_array_equal(alone.generated_audio_tokens, b.generated_audio_tokens)
        np.testing.assert_allclose(alone.audio, b.audio, atol=1e-4)
        assert b.usage["completion_tokens"] == s.max_new_tokens and b.usage["finish_reason"] == "length"
    assert len({r.generated_audio_tokens.tobytes() for r in batched}) == 3
    with pytest.raises(ValueError, match="2 settings for 3 requests"):
        engine.generate_prompts(prompts, settings[:2])


def test_prompts_sharing_a_voice_prefill_it_once_and_match_alone(engine, joe, monkeypatch):
    """Two requests cloning one voice share the long prompt prefix: it is computed once for the batch."""
    prompts = [_prompt(engine, SENTENCES[1], {0: joe}), _prompt(engine, SENTENCES[2], {0: joe})]
    settings = [_settings(20, 21), _settings(20, 22)]
    shared = []
    original = engine.decoder.start
    monkeypatch.setattr(engine.decoder, "start", lambda *a: shared.append(a[2]) or original(*a))
    batched = engine.generate_prompts(prompts, settings)
    assert shared[-1] > joe.codes.shape[1]  # the whole reference is in the shared prefix
    for prompt, s, b in zip(prompts, settings, batched):
        alone = engine.generate_prompts([prompt], s)[0]
        assert shared[-1] <= shared[0]  # alone: the prefix up to the reference's end
        np.testing.assert_array_equal(alone.generated_audio_tokens, b.generated_audio_tokens)


def test_a_voice_reference_is_read_once_across_requests(tmp_path, monkeypatch, build_tiny_speech_model):
    """The prompt prefix up to a reference clip's end is kept: the next request with that voice runs only the
    rest of its prompt through the model, and gives what a fresh engine gives."""
    engine = HiggsAudioServeEngine(build_tiny_speech_model(tmp_path))
    joe = voice_reference(engine, "joe")
    first = engine.generate_prompts([_prompt(engine, SENTENCES[1], {0: joe})], _settings(12, 3))[0]
    prompt = _prompt(engine, SENTENCES[2], {0: joe})
    prefilled = []
    forward = engine.model.forward
    monkeypatch.setattr(engine.model, "forward", lambda **kw: prefilled.append(kw["input_ids"].shape[1]) or forward(**kw))
    warm = engine.generate_prompts([prompt], _settings(12, 4))[0]
    monkeypatch.undo()
    assert len(engine.prefill.cache) == 1 and first.generated_audio_tokens.size
    assert sum(prefilled) < len(expand_sample(prompt, engine.config)) - joe.codes.shape[1]
    fresh = HiggsAudioServeEngine(build_tiny_speech_model(tmp_path / "again"))
    cold = fresh.generate_prompts([_prompt(fresh, SENTENCES[2], {0: voice_reference(fresh, "joe")})], _settings(12, 4))[0]
    np.testing.assert_array_equal(warm.generated_audio_tokens, cold.generated_audio_tokens)


# ----------------------------------------------------------------------------------- the delay pattern


def test_generated_codes_are_frames_of_real_codes(engine):
    responses = engine.generate_prompts([_prompt(engine, t) for t in SENTENCES], _settings(30, 5))
    for r in responses:
        codes = r.generated_audio_tokens
        # 30 columns hold 30 - N_Q complete frames; a cut-off stream's last one is held back as if it closed it
        assert codes.shape == (N_Q, 30 - N_Q - 1)
        assert codes.min() >= 0 and codes.max() <= CODEBOOK - 1
        assert len(r.audio) == codes.shape[1] * engine.audio_tokenizer.hop_length


def test_eos_on_codebook_0_ends_the_stream_with_the_full_staircase(engine, monkeypatch):
    _force_eos_at(engine, monkeypatch, column=5)
    prompt = _prompt(engine, SENTENCES[1])
    deltas = list(engine.stream_prompt(prompt, _settings(40, 1)))
    assert [d.finish_reason for d in deltas] == [None] * (len(deltas) - 1) + ["stop"]
    delayed = _delayed_columns(deltas)
    assert delayed.shape == (N_Q, 4 + N_Q + 1)  # T = 4 frames: columns 1..4, EOS from column 5
    _force_eos_at(engine, monkeypatch, column=5)  # a fresh call counter for the non-streamed run
    response = engine.generate_prompts([prompt], _settings(40, 1))[0]
    codes = response.generated_audio_tokens
    assert codes.shape == (N_Q, 4) and response.usage["finish_reason"] == "stop"
    np.testing.assert_array_equal(delayed, build_delay_pattern(torch.from_numpy(codes), CODEBOOK, CODEBOOK + 1).numpy())


def test_bos_and_eos_only_where_the_pattern_puts_them(engine, monkeypatch):
    """Even a head that wants BOS/EOS everywhere yields a valid stream: codebook 0 may not end before one frame,
    the others neither start late nor end early."""
    _force_eos_at(engine, monkeypatch, everywhere=True)
    deltas = list(engine.stream_prompt(_prompt(engine, SENTENCES[0]), _settings(40, 2)))
    delayed = _delayed_columns(deltas)
    assert deltas[-1].finish_reason == "stop" and delayed.shape == (N_Q, 1 + N_Q + 1)
    codes = delayed[np.arange(N_Q), np.arange(N_Q) + 1][:, None]
    assert codes.max() < CODEBOOK
    np.testing.assert_array_equal(delayed, build_delay_pattern(torch.from_numpy(codes), CODEBOOK, CODEBOOK + 1).numpy())
    assert len(np.concatenate([d.audio for d in deltas if d.audio is not None])) == engine.audio_tokenizer.hop_length


def test_text_turns_into_audio_after_audio_out_bos(engine, monkeypatch):
    """Unforced, the model writes text until it opens audio with <|audio_out_bos|> (here at its 3rd token)."""
    original, calls = engine.decoder.text_logits, []
    audio_out_bos = engine.config.audio_out_bos_token_id

    def text_logits(hidden):
        logits = original(hidden)
        if len(calls) == 2:
            logits[..., audio_out_bos] = 1e4
        calls.append(1)
        return logits

    monkeypatch.setattr(engine.decoder, "text_logits", text_logits)
    settings = GenerationSettings(max_new_tokens=30, seed=1, force_audio_gen=False)
    response = engine.generate_prompts([_prompt(engine, SENTENCES[0])], settings)[0]
    assert len(response.generated_text_tokens) == 3 and response.generated_text_tokens[-1] == audio_out_bos
    assert response.generated_audio_tokens.shape == (N_Q, 30 - 3 - N_Q - 1)


# ----------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("chunk, first", [(5, 1), (1, 1), (4, 4), (7, 3)])
def test_stream_concatenates_to_the_generated_audio(engine, joe, chunk, first):
    prompt = _prompt(engine, SENTENCES[1], {0: joe})
    settings = GenerationSettings(max_new_tokens=50, seed=7, stream_chunk_frames=chunk, stream_first_chunk_frames=first)
    whole = engine.generate_prompts([prompt], settings)[0]
    deltas = list(engine.stream_prompt(prompt, settings))
    assert len(deltas) == 50 and deltas[-1].finish_reason == "length"
    with_audio = [i for i, d in enumerate(deltas) if d.audio is not None and len(d.audio)]
    # audio before the end: the first as soon as `first` frames have the codec's lookahead behind them (the
    # delay pattern holds the first frame back N_Q steps), then a chunk every `chunk` steps
    lookahead, hop = engine.audio_tokenizer.lookahead_frames, engine.audio_tokenizer.hop_length
    assert with_audio[0] == N_Q + lookahead + first - 1 < len(deltas) - 1
    sizes = [len(deltas[i].audio) // hop for i in with_audio]
    assert sizes[0] == first and set(sizes[1:-1]) <= {chunk} and np.diff(with_audio[:-1]).tolist() == [chunk] * (len(sizes) - 2)
    streamed = np.concatenate([deltas[i].audio for i in with_audio])
    assert streamed.shape == whole.audio.shape
    np.testing.assert_allclose(streamed, whole.audio, atol=1e-4)


def test_decode_codebooks_turns_only_the_first_k_into_audio(tiny_speech_model, joe):
    """`decode_codebooks=K`: the audio (whole and streamed) is the codec's decode of the first K codebooks;
    the response keeps all of them. K outside 1..n_q is refused."""
    engine = HiggsAudioServeEngine(tiny_speech_model, decode_codebooks=2)
    prompt = _prompt(engine, SENTENCES[1], {0: joe})
    settings = GenerationSettings(max_new_tokens=40, seed=3)
    whole = engine.generate_prompts([prompt], settings)[0]
    assert whole.generated_audio_tokens.shape[0] == N_Q
    np.testing.assert_allclose(whole.audio, engine.audio_tokenizer.decode(whole.generated_audio_tokens[:2]), atol=1e-5)
    streamed = np.concatenate([d.audio for d in engine.stream_prompt(prompt, settings) if d.audio is not None])
    np.testing.assert_allclose(streamed, whole.audio, atol=1e-4)
    with pytest.raises(ValueError, match="decode_codebooks 9"):
        HiggsAudioServeEngine(tiny_speech_model, decode_codebooks=9)


def test_a_batch_of_streams_decodes_its_due_chunks_in_one_codec_call(engine, joe, monkeypatch):
    """Rows that advance in step have their chunks due together: one codec call per chunk for all of them,
    and each row's audio still joins to its whole decode."""
    prompts = [_prompt(engine, text, {0: joe}) for text in SENTENCES]
    settings = [_settings(45, seed) for seed in range(3)]
    wholes = engine.generate_prompts(prompts, settings)
    codec, calls = engine.audio_tokenizer.model, []
    decode = codec.decode
    monkeypatch.setattr(codec, "decode", lambda codes: calls.append(codes.shape[0]) or decode(codes))
    steps = list(engine.stream_prompts(prompts, settings))
    monkeypatch.undo()
    with_audio = [n for n, deltas in enumerate(steps) if any(d.audio is not None for d in deltas)]
    assert calls == [3] * len(with_audio) and len(calls) < 45 // 4  # every call decodes all rows, ~1 in 5 steps
    for i, whole in enumerate(wholes):
        streamed = np.concatenate([deltas[i].audio for deltas in steps if deltas[i].audio is not None])
        np.testing.assert_allclose(streamed, whole.audio, atol=1e-4)


def test_stream_ending_on_eos_flushes_all_audio(engine, monkeypatch):
    prompt, settings = _prompt(engine, SENTENCES[0]), _settings(40, 8)
    _force_eos_at(engine, monkeypatch, column=15)
    whole = engine.generate_prompts([prompt], settings)[0]
    _force_eos_at(engine, monkeypatch, column=15)
    deltas = list(engine.stream_prompt(prompt, settings))
    streamed = np.concatenate([d.audio for d in deltas if d.audio is not None])
    assert whole.generated_audio_tokens.shape[1] == 14
    np.testing.assert_allclose(streamed, whole.audio, atol=1e-4)


def test_batched_streams_match_streams_alone_and_a_cancelled_one_stops(engine, joe):
    prompts = [_prompt(engine, SENTENCES[0]), _prompt(engine, SENTENCES[1], {0: joe})]
    settings = [_settings(24, 1), _settings(30, 2)]
    steps = list(engine.stream_prompts(prompts, settings))
    assert len(steps) == 30 and all(len(deltas) == 2 for deltas in steps)
    for i, (prompt, s) in enumerate(zip(prompts, settings)):
        alone = list(engine.stream_prompt(prompt, s))
        together = [deltas[i] for deltas in steps]
        assert [d.finish_reason for d in together[: len(alone)]] == [d.finish_reason for d in alone]
        assert all(d.audio is None and d.response is None for d in together[len(alone):])  # done: empty deltas
        np.testing.assert_allclose(np.concatenate([d.audio for d in together if d.audio is not None]),
                                   np.concatenate([d.audio for d in alone if d.audio is not None]), atol=1e-4)
        whole = engine.generate_prompts([prompt], s)[0]
        last = together[len(alone) - 1].response
        np.testing.assert_array_equal(last.generated_audio_tokens, whole.generated_audio_tokens)
        assert last.audio is None and last.usage == whole.usage
    cancelled = list(engine.stream_prompts(prompts, settings, cancelled=lambda i: i == 1))
    assert [d.finish_reason for d in cancelled[1]] == [None, "cancelled"]
    assert len(cancelled) == 24 and cancelled[1][1].response.usage["completion_tokens"] == 1
    # every row cancelled at once: the batch ends, and each row still gets its closing delta with its response
    everyone = list(engine.stream_prompts(prompts, settings, cancelled=lambda i: True))
    assert len(everyone) == 2 and [d.finish_reason for d in everyone[1]] == ["cancelled", "cancelled"]
    assert all(d.response.usage["completion_tokens"] == 1 for d in everyone[1])


def test_async_delta_stream(engine):
    sample = ChatMLSample([system_message(), Message("user", "Hello there.")])

    async def collect():
        return [d async for d in engine.generate_delta_stream(sample, max_new_tokens=30, seed=9)]

    deltas = asyncio.run(collect())
    whole = engine.generate(sample, max_new_tokens=30, seed=9)
    assert deltas[-1].finish_reason == "length"
    np.testing.assert_allclose(np.concatenate([d.audio for d in deltas if d.audio is not None]), whole.audio, atol=1e-4)


# ----------------------------------------------------------------------------------- cloning prompts


def test_reference_as_user_assistant_pair(engine, joe):
    prompt = _prompt(engine, SENTENCES[1], {0: joe})
    turns = _turns(engine.tokenizer, prompt.input_ids)
    assert [r for r, _ in turns] == ["system", "user", "assistant", "user", "assistant"]
    assert "<|AUDIO" not in turns[0][1]
    assert turns[2][1] == "<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|>"
    assert turns[-1][1] == ""  # ends in the open assistant header, as training prompts do
    assert len(prompt.audio_codes) == 1 and prompt.audio_codes[0] is joe.codes


def test_reference_in_system_message_is_audio_codes_there(engine, joe):
    """The original's #136: a reference in the system message must reach the model as its codes."""
    prompt = _prompt(engine, SENTENCES[1], {0: joe}, ref_in_system=True)
    turns = _turns(engine.tokenizer, prompt.input_ids)
    assert [r for r, _ in turns] == ["system", "user", "assistant"]
    assert "SPEAKER0: <|audio_bos|><|AUDIO|><|audio_eos|>" in turns[0][1]
    assert "<|AUDIO" not in turns[1][1]
    expanded = expand_sample(prompt, engine.config)
    audio_positions = np.flatnonzero(expanded.audio_mask)
    first_eot = int(np.flatnonzero(expanded.input_ids == engine.tokenizer.token_id("<|eot_id|>"))[0])
    T = joe.codes.shape[1]
    assert len(audio_positions) == T + N_Q + 1 and audio_positions.max() < first_eot
    delayed = build_delay_pattern(torch.from_numpy(joe.codes.astype(np.int64)), CODEBOOK, CODEBOOK + 1).numpy()
    np.testing.assert_array_equal(expanded.audio_codes[:, audio_positions], delayed)


def test_dialogue_puts_both_references_in_the_system_message(engine, joe, slt):
    text = "[SPEAKER0] hi [SPEAKER1] there"
    prompt = _prompt(engine, text, {0: joe, 1: slt})
    turns = _turns(engine.tokenizer, prompt.input_ids)
    assert [r for r, _ in turns] == ["system", "user", "assistant"]
    system = turns[0][1]
    audio_in = "<|audio_bos|><|AUDIO|><|audio_eos|>"
    assert system.index(f"SPEAKER0: {audio_in}") < system.index(f"SPEAKER1: {audio_in}")
    assert "[SPEAKER0]" in turns[1][1] and "[SPEAKER1]" in turns[1][1]
    assert [c is r.codes for c, r in zip(prompt.audio_codes, (joe, slt))] == [True, True]


class _Recorder:
    """Wraps engine.generate_prompts to keep every prompt and response speak() makes."""

    def __init__(self, engine, monkeypatch):
        self.prompts, self.responses = [], []
        original = engine.generate_prompts

        def generate_prompts(prompts, settings=None, **options):
            responses = original(prompts, settings, **options)
            self.prompts += prompts
            self.responses += responses
            return responses

        monkeypatch.setattr(engine, "generate_prompts", generate_prompts)


def test_speaker_without_reference_keeps_its_first_turn_as_voice(engine, joe, monkeypatch):
    rec = _Recorder(engine, monkeypatch)
    request = SpeechRequest("[SPEAKER0] Hello there. [SPEAKER1] How are you? [SPEAKER1] It is fine.", {0: joe},
                            chunk_method="speaker", settings=_settings(39, 1))  # 3 words a turn
    response = speak(engine, request)
    assert len(rec.prompts) == 3 and list(request.references) == [0]  # the caller's request is left alone
    first_turn_of_1 = rec.responses[1].generated_audio_tokens
    last = rec.prompts[2]
    system = _turns(engine.tokenizer, last.input_ids)[0][1]
    assert "SPEAKER0: <|audio_bos|>" in system and "SPEAKER1: <|audio_bos|>" in system
    assert last.audio_codes[0] is joe.codes and last.audio_codes[1] is first_turn_of_1
    assert response.generated_audio_tokens.shape[1] == sum(r.generated_audio_tokens.shape[1] for r in rec.responses)


def test_voice_picked_for_speaker1_is_labelled_speaker1(engine, monkeypatch):
    rec = _Recorder(engine, monkeypatch)
    speak(engine, SpeechRequest("[SPEAKER1] Hello there. [SPEAKER0] How are you?", chunk_method="speaker",
                                settings=_settings(39, 1)))
    system = _turns(engine.tokenizer, rec.prompts[1].input_ids)[0][1]
    assert "SPEAKER1: <|audio_bos|>" in system


def test_speak_batch_gives_each_request_what_speak_gives_it(engine, joe, never_stops):
    """Requests of a batch, one of them long form, are said as each is alone (chunks in step). Greedy, as in
    test_batch_gives_each_request_what_it_gets_alone: rounding may swap a random model's near-tie draws."""
    def greedy(n: int, seed: int) -> GenerationSettings:  # the seed still drives repetition-aware resampling
        return replace(_settings(n, seed), temperature=0.0)

    requests = [SpeechRequest(SENTENCES[0], {0: joe}, settings=greedy(29, 1)),
                SpeechRequest(" ".join(SENTENCES), chunk_method="word", chunk_max_word_num=6, settings=greedy(69, 2)),
                SpeechRequest("[SPEAKER0] Hello there. [SPEAKER1] How are you?", chunk_method="speaker",
                              settings=greedy(39, 3))]
    batched = speak_batch(engine, requests)
    for request, b in zip(requests, batched):
        alone = speak(engine, request)
        np.testing.assert_array_equal(alone.generated_audio_tokens, b.generated_audio_tokens)
        np.testing.assert_allclose(alone.audio, b.audio, atol=1e-4)
    assert batched[1].generated_audio_tokens.shape[1] == 4 * (69 - N_Q - 1)  # the 11-word sentence in two
    with pytest.raises(ValueError, match="empty"):
        speak_batch(engine, [requests[0], SpeechRequest(" ")])


def test_speak_stream_joins_to_what_speak_says(engine, joe):
    request = SpeechRequest(SENTENCES[1], {0: joe}, settings=_settings(69, 5))  # 6 words
    deltas = list(speak_stream(engine, request))
    assert deltas[-1].finish_reason == "length"
    streamed = np.concatenate([d.audio for d in deltas if d.audio is not None])
    np.testing.assert_allclose(streamed, speak(engine, request).audio, atol=1e-4)
    with pytest.raises(ValueError, match="one piece"):
        speak_stream(engine, SpeechRequest(SENTENCES[1], chunk_method="word"))


# ----------------------------------------------------------------------------------- long form


def test_word_chunks_respect_the_limit_and_cut_only_long_sentences():
    """Sentences are packed whole; one longer than the limit is cut after its commas, and between words only
    where a clause is still longer."""
    text = ("One two three. Four five six seven! Eight nine?\n\nA sentence of ten words, cut only at its comma. "
            "Ten eleven.\n\nWith no comma at all these twelve words go on and on.")
    chunks = plan_chunks(text, "word", chunk_max_word_num=8)
    assert [c.text for c in chunks] == ["One two three. Four five six seven!", "Eight nine?", "A sentence of ten words,",
                                        "cut only at its comma. Ten eleven.", "With no comma at all these twelve words",
                                        "go on and on."]
    assert " ".join(c.text for c in chunks).split() == text.split()
    assert all(c.speaker is None for c in chunks)


def test_speaker_chunks_and_planning_errors():
    chunks = plan_chunks("Intro. [SPEAKER0] Hi there. [SPEAKER1] Hello. [SPEAKER0] Bye.", "speaker")
    assert [(c.speaker, c.text) for c in chunks] == [(None, "Intro."), (0, "Hi there."), (1, "Hello."), (0, "Bye.")]
    words = plan_chunks("[SPEAKER0] A b c. D e f. [SPEAKER1] G h.", "word", chunk_max_word_num=3)
    assert [(c.speaker, c.text) for c in words] == [(0, "A b c."), (0, "D e f."), (1, "G h.")]
    assert plan_chunks("[SPEAKER2] alone", None)[0].speaker == 2
    assert plan_chunks("[SPEAKER0] a [SPEAKER1] b", None)[0].speaker is None
    with pytest.raises(ValueError, match="unknown chunk method 'lines'"):
        plan_chunks("hi", "lines")
    with pytest.raises(ValueError, match="empty"):
        plan_chunks("  ", None)


@pytest.mark.parametrize("buffer_size", [1, 0])
def test_long_form_joins_chunk_codes_and_buffers_recent_chunks(engine, joe, monkeypatch, buffer_size):
    rec = _Recorder(engine, monkeypatch)
    text = "Hello there. How are you?\n\nIt is a fine day. For a walk in the park."
    request = SpeechRequest(text, {0: joe}, chunk_method="word", chunk_max_word_num=6, buffer_size=buffer_size,
                            settings=_settings(69, 4))
    response = speak(engine, request)
    assert len(rec.prompts) == 3
    parts = [r.generated_audio_tokens for r in rec.responses]
    np.testing.assert_array_equal(response.generated_audio_tokens, np.concatenate(parts, axis=1))
    assert len(response.audio) == sum(p.shape[1] for p in parts) * engine.audio_tokenizer.hop_length
    for k, prompt in enumerate(rec.prompts):
        assert prompt.audio_codes[0] is joe.codes
        previous = prompt.audio_codes[1:]
        assert len(previous) == min(k, buffer_size)
        if previous:
            assert previous[-1] is parts[k - 1]
    assert not np.array_equal(parts[0], parts[1])  # chunks get seeds seed + index


def test_text_longer_than_its_steps_can_say_is_said_in_word_chunks_never_cut(engine, monkeypatch, never_stops):
    """Without a chunk method, a transcript whose words max_new_tokens cannot say at a reading pace (0.4 s a
    word) is said in word chunks that it can; where that cannot help (a stream, a speaker turn, too few steps
    for a word) it is refused naming the text's length, the limit and what to change."""
    rec = _Recorder(engine, monkeypatch)
    text = " ".join(SENTENCES * 2)  # 38 words: 15.2 s
    settings = _settings(49, 0)  # 40 frames: 1.6 s, 4 words
    assert speakable_words(engine, settings) == 4 and steps_to_say(engine, 4) == 49
    request = SpeechRequest(text, settings=settings)
    chunks = Speech(engine, request).chunks
    assert [c.text for c in chunks] == [c.text for c in plan_chunks(text, "word", 4)]
    response = speak(engine, request)
    assert len(rec.prompts) == len(chunks) > 9
    assert response.generated_audio_tokens.shape[1] == len(chunks) * (49 - N_Q - 1)  # every chunk said
    assert len(Speech(engine, SpeechRequest(SENTENCES[1], settings=_settings(69, 0))).chunks) == 1  # 6 words fit
    with pytest.raises(ValueError, match=r"\(167 characters, 38 words\) cannot be streamed in one piece: 38 words take "
                                         r"about 15.2 s to say \(0.4 s a word\), but max_new_tokens 49 holds 1.60 s: "
                                         r"give at least 389, or say it without streaming"):
        speak_stream(engine, SpeechRequest(text, settings=settings))
    with pytest.raises(ValueError, match=r"'How are you today, my friend\?' \(29 characters, 6 words\) cannot be said: "
                                         r".* give at least 69, or use chunk method 'word'"):
        Speech(engine, SpeechRequest(f"[SPEAKER0] {SENTENCES[1]}", chunk_method="speaker", settings=settings))
    with pytest.raises(ValueError, match=r"max_new_tokens 18 holds 0.36 s, too little to say a word \(0.4 s\): "
                                         r"give at least 19"):
        Speech(engine, SpeechRequest(SENTENCES[0], settings=_settings(18, 0)))


def test_text_longer_than_the_context_is_said_in_chunks_that_fit_or_refused(tmp_path, monkeypatch,
                                                                           build_tiny_speech_model):
    """A prompt and its steps must fit in the model's context: word chunks are made shorter until each does
    (keeping only the earlier chunks that fit beside it); when not even one word fits, a clear error."""
    engine = HiggsAudioServeEngine(build_tiny_speech_model(tmp_path, max_position_embeddings=200))
    text, settings = " ".join(SENTENCES), _settings(69, 0)  # steps for 6 words, but 6 words do not fit beside them
    with pytest.raises(ValueError, match="context of 200"):
        engine.generate_prompts([conversation(SpeechRequest(text), Chunk(text), [], engine.tokenizer)], settings)
    rec = _Recorder(engine, monkeypatch)
    request = SpeechRequest(text, settings=settings)
    said = [c.text for c in Speech(engine, request).chunks]
    response = speak(engine, request)
    assert len(rec.prompts) == len(said) and " ".join(said).split() == text.split()
    assert max(len(s.split()) for s in said) < speakable_words(engine, settings)
    assert all(expanded_length(p) + 1 + 69 <= 200 for p in rec.prompts)
    assert response.generated_audio_tokens.shape[1] == sum(r.generated_audio_tokens.shape[1] for r in rec.responses)
    assert all(r.generated_audio_tokens.shape[1] for r in rec.responses)  # every chunk said
    joe = voice_reference(engine, "joe")
    with pytest.raises(ValueError, match=r"text 'Hello' \(5 characters, 1 word\) cannot be said: the prompt .* context "
                                         r"of 200: give a lower max_new_tokens or a shorter voice reference"):
        speak(engine, SpeechRequest(text, {0: joe}, settings=settings))


# ----------------------------------------------------------------------------------- evaluation tables


def test_aggregate_and_report():
    rows = [CaseResult("joe", "joe", "a b c d", "a b c", 4, 1, 0, 1, 0.8, 1.5, 3.0, 3.5),
            CaseResult("joe", "joe", "e f", "e g h", 2, 2, None, None, 0.6, 0.5, 2.0, None),
            CaseResult("festival", "kal", "x y z w", "x y z w", 4, 0, 2, 3, 0.9, 2.0, 2.5, 2.3)]
    joe_group = aggregate(rows[:2])
    assert joe_group["n"] == 2 and joe_group["wer"] == pytest.approx(50.0)
    assert joe_group["engine_wer"] == pytest.approx(0.0)  # only the row with a known engine transcript counts
    assert joe_group["codec_wer"] == pytest.approx(25.0)
    assert joe_group["similarity"] == pytest.approx(0.7) and joe_group["mean_seconds"] == pytest.approx(1.0)
    assert joe_group["dnsmos"] == pytest.approx(2.5) and joe_group["engine_dnsmos"] == pytest.approx(3.5)
    festival = aggregate(rows[2:])
    assert festival["wer"] == 0.0 and festival["engine_wer"] == pytest.approx(50.0)
    none_known = aggregate([rows[1]])
    assert none_known["engine_wer"] is None and none_known["codec_wer"] is None and none_known["engine_dnsmos"] is None
    report = {"groups": {"joe": joe_group, "festival": festival, "x": none_known},
              "voices": {"festival/kal": festival}, "rtf": 0.1234, "batch_size": 8}
    lines = format_report(report).splitlines()
    assert lines[0].split() == ["group", "n", "WER", "%", "engine", "WER", "%", "codec", "WER", "%", "similarity",
                                "DNSMOS", "engine", "DNSMOS", "mean", "s"]
    assert lines[1].split() == ["joe", "2", "50.0", "0.0", "25.0", "0.700", "2.50", "3.50", "1.00"]
    assert lines[2].split() == ["festival", "1", "0.0", "50.0", "75.0", "0.900", "2.50", "2.30", "2.00"]
    assert lines[3].split() == ["x", "1", "100.0", "-", "-", "0.600", "2.00", "-", "0.50"]
    assert lines[4].split() == ["festival/kal", "1", "0.0", "50.0", "75.0", "0.900", "2.50", "2.30", "2.00"]
    assert lines[-1] == "real-time factor (batch 8): 0.123"


def test_reference_codes_follow_the_file_and_the_cache_is_bounded(engine, tmp_path, monkeypatch):
    import os

    from cadenza.higgs_audio import engine as engine_module

    path = tmp_path / "ref.wav"
    t = np.arange(24000) / 24000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 24000)
    first = engine.audio_codes(AudioContent(audio_url=str(path)))
    sf.write(path, (0.3 * np.sin(2 * np.pi * 660 * t)).astype(np.float32), 24000)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # a rewritten file
    assert not np.array_equal(first, engine.audio_codes(AudioContent(audio_url=str(path))))
    monkeypatch.setattr(engine_module, "CODES_CACHE_SIZE", 2)
    for n in range(4):
        engine.audio_codes(AudioContent(audio_url=str(path), duration=0.2 + 0.1 * n))
    assert len(engine._codes_cache) == 2


def test_joe_says_held_out_sentences_when_the_corpus_keeps_joe_in_train(tmp_path):
    """Voices are split by speaker, so piper-joe has no test utterances: the joe group takes the test split's
    sentences, and Piper joe says each one for the engine's own WER."""
    import json

    from cadenza.higgs_audio.corpus_voices import engine_available
    from cadenza.higgs_audio.tts_eval import build_cases

    rows = [{"id": "a", "audio": "a.wav", "text": "This is joe in the training split.", "speaker": "piper-joe",
             "duration": 2.0, "split": "train"},
            {"id": "b", "audio": "b.wav", "text": "A sentence nobody trained on at all.", "speaker": "flite-slt",
             "duration": 2.0, "split": "test"},
            {"id": "c", "audio": "c.wav", "text": "Another one held out for the test.", "speaker": "flite-slt",
             "duration": 2.0, "split": "test"}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cases = build_cases(tmp_path, joe=2, per_voice=0, festival=False, work_dir=tmp_path / "work")
    assert sorted(c.text for c in cases) == sorted(r["text"] for r in rows[1:])
    assert all(c.group == "joe" and c.voice == "joe" for c in cases)
    if engine_available("piper"):
        assert all(Path(c.engine_audio).is_file() for c in cases)


def test_eval_cases_come_from_the_split_asked_for(tmp_path):
    """`--split val` says val sentences in val-only voices (to choose settings), never a test sentence."""
    import json

    from cadenza.higgs_audio.tts_eval import build_cases

    rows = [{"id": f"{split}{i}", "audio": f"{split}{i}.wav", "text": f"A {split} sentence number {i} here.",
             "speaker": f"flite-{split}", "duration": 3.0, "split": split}
            for split in ("train", "val", "test") for i in range(3)]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for split in ("val", "test"):
        cases = build_cases(tmp_path, joe=0, per_voice=2, festival=False, work_dir=tmp_path / "work", split=split)
        assert len(cases) == 2
        assert all(c.voice == f"flite-{split}" and f"A {split} sentence" in c.text for c in cases)
    with pytest.raises(ValueError, match="split"):
        build_cases(tmp_path, joe=0, split="train")
