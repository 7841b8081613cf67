"""`cadenza serve --replicas 2`: the app as a Ray Serve deployment of two replicas behind Ray's proxy, on 127.0.0.1."""

from __future__ import annotations

import socket

import httpx2 as httpx
import openai
import pytest

from cadenza.serve import ServerConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tiny_speech_model, tmp_path_factory):
    from cadenza.serve.replicas import start_replicas, stop_replicas

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ServerConfig(speech_model=tiny_speech_model, voices_dir=tmp_path_factory.mktemp("voices"), max_new_tokens=40)
    try:
        yield start_replicas(config, 2, "127.0.0.1", port)
    finally:
        stop_replicas()


def test_two_replicas_answer_speech_through_the_proxy(url):
    from cadenza.serve.replicas import running_replicas

    assert running_replicas() == 2
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="joe", input="Hello there.",
                                                            response_format="pcm", extra_body={"max_new_tokens": 29}) as response:
        streamed = response.headers.get("transfer-encoding") == "chunked"  # passed on as it comes, not buffered
        chunks = list(response.iter_bytes(chunk_size=None))
    # (how many reads the bytes arrive in depends on timing: over TCP a fast stream may come in one)
    assert streamed and sum(map(len, chunks)) == 2 * 20 * 960  # 29 steps: 20 frames, 2 words
    error = httpx.post(f"{url}/v1/audio/speech", json={"input": "Hi.", "voice": "nobody"}, timeout=60)
    assert error.status_code == 400 and error.json()["error"]["code"] == "voice_not_found"
