"""OpenAI's speech API: `POST /v1/audio/speech` (whole, chunked as generated, or SSE) and the voices routes."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Literal

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse

from cadenza.serve.audio_formats import StreamEncoder, content_type, encode
from cadenza.serve.errors import APIError, check_model, overloaded
from cadenza.serve.speech_engine import AudioContent, GenerationSettings
from cadenza.serve.state import ServerState
from cadenza.serve.worker import QueueFull, SpeechJob

router = APIRouter()
SPEECH_MODELS = ("higgs-audio", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")  # OpenAI's names are aliases of ours
# The worker's errors: 400, a text the model cannot say (too few steps for a word, a prompt beyond its context).
ERROR_CODES = {400: "input_cannot_be_said", 500: "generation_failed", 504: "timeout"}


class SpeechBody(BaseModel):
    """OpenAI's speech request, plus `stream`, `seed`, `temperature` and `max_new_tokens`."""

    model: str = "higgs-audio"
    input: str
    voice: str | None = None
    instructions: str | None = None  # spoken as the scene description
    response_format: Literal["wav", "mp3", "flac", "opus", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    stream: bool = True  # send audio as it is generated (False: one body with Content-Length)
    seed: int | None = None
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_new_tokens: int | None = Field(None, ge=1)


def submit(state: ServerState, text: str, voice: tuple[AudioContent, str] | None, scene: str | None,
           seed: int | None, temperature: float, max_new_tokens: int | None) -> SpeechJob:
    """Queue a speech request; 400 for bad text, 503 (Retry-After) when the queue is full."""
    worker, config = state.speech_worker(), state.config
    if not text.strip():
        raise APIError(400, "input is empty: give the text to speak", param="input", code="empty_input")
    if len(text) > config.max_input_chars:
        raise APIError(400, f"input is {len(text)} characters; at most {config.max_input_chars}", param="input",
                       code="input_too_long")
    steps = min(max_new_tokens or config.max_new_tokens, config.max_new_tokens)
    settings = GenerationSettings(max_new_tokens=steps, temperature=temperature, seed=seed)
    job = SpeechJob(text, voice, scene or state.default_scene, settings, time.monotonic() + config.timeout)
    try:
        worker.submit(job)
    except QueueFull:
        raise overloaded(retry_after=max(1, worker.depth // max(1, worker.max_batch))) from None
    return job


async def job_audio(job: SpeechJob, state: ServerState) -> AsyncIterator[np.ndarray]:
    """A job's audio pieces as they come; APIError on its error or timeout. Leaving early cancels the job."""
    started, first = time.monotonic(), True
    finished = False
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), max(job.deadline - time.monotonic(), 0.01))
            except TimeoutError:
                raise APIError(504, "the request timed out", code="timeout") from None
            if kind == "audio":
                if first:
                    state.metrics.first_audio.observe(time.monotonic() - started)
                    first = False
                yield value
            elif kind == "done":
                finished = True
                job.usage = value
                return
            else:
                finished = True
                status, message = value
                raise APIError(status, message, code=ERROR_CODES.get(status))
    finally:
        if not finished:
            job.cancel()


async def collect(job: SpeechJob, state: ServerState, request: Request) -> np.ndarray:
    """All of a job's audio; a client that disconnects meanwhile cancels the job."""
    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.2)
        job.cancel()

    watcher = asyncio.create_task(watch())
    try:
        pieces = [piece async for piece in job_audio(job, state)]
    finally:
        watcher.cancel()
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


async def first_then_rest(job: SpeechJob, state: ServerState) -> AsyncIterator[np.ndarray]:
    """`job_audio`, having waited for the first piece, so that an error before any audio is still a 4xx answer."""
    pieces = job_audio(job, state)
    first = await anext(pieces, None)

    async def rest() -> AsyncIterator[np.ndarray]:
        try:
            if first is not None:
                yield first
            async for piece in pieces:
                yield piece
        finally:
            await pieces.aclose()

    return rest()


def stretch(audio: np.ndarray, speed: float) -> np.ndarray:
    """Audio played `speed` times faster at the same pitch (phase vocoder)."""
    if speed == 1.0 or len(audio) == 0:
        return audio
    import librosa

    return librosa.effects.time_stretch(audio, rate=speed).astype(np.float32)


async def encoded(pieces: AsyncIterator[np.ndarray], fmt: str, rate: int, speed: float) -> AsyncIterator[bytes]:
    """The bytes of audio in a response format as it comes, or, at another speed, all at once at the end."""
    if speed == 1.0:
        encoder = StreamEncoder(fmt, rate)
        async for piece in pieces:
            if data := encoder.push(piece):
                yield data
        if data := encoder.close():
            yield data
    else:
        audio = [piece async for piece in pieces]
        yield encode(stretch(np.concatenate(audio) if audio else np.zeros(0, np.float32), speed), rate, fmt)


@router.post("/v1/audio/speech")
async def create_speech(body: SpeechBody, request: Request) -> Response:
    """Text to speech, as OpenAI's `audio.speech.create`."""
    state: ServerState = request.app.state.cadenza
    check_model(body.model, SPEECH_MODELS)
    voice = state.voice_reference(body.voice)
    job = submit(state, body.input, voice, body.instructions, body.seed, body.temperature, body.max_new_tokens)
    rate, fmt = state.speech_worker().sampling_rate, body.response_format
    if not body.stream and body.stream_format == "audio":
        audio = await collect(job, state, request)
        data = await asyncio.to_thread(lambda: encode(stretch(audio, body.speed), rate, fmt))
        return Response(data, media_type=content_type(fmt))
    chunks = encoded(await first_then_rest(job, state), fmt, rate, body.speed)
    if body.stream_format == "sse":
        return EventSourceResponse(_sse(chunks, job))
    return StreamingResponse(chunks, media_type=content_type(fmt))


async def _sse(chunks: AsyncIterator[bytes], job: SpeechJob) -> AsyncIterator[dict]:
    """OpenAI's speech events: `speech.audio.delta` with base64 audio, then `speech.audio.done` with the usage."""
    try:
        async for data in chunks:
            yield {"data": json.dumps({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})}
    except APIError as exc:
        yield {"data": json.dumps({"type": "error", "error": {"message": exc.message, "code": exc.code}})}
        return
    prompt, completion = job.usage["prompt_tokens"], job.usage["completion_tokens"]
    usage = {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}
    yield {"data": json.dumps({"type": "speech.audio.done", "usage": usage})}


@router.get("/v1/audio/voices")
async def list_voices(request: Request) -> dict:
    """The shipped presets and the uploaded voices."""
    state: ServerState = request.app.state.cadenza
    return {"object": "list", "data": [v.describe() for v in state.voices.all()]}


@router.post("/v1/audio/voices", status_code=201)
async def add_voice(request: Request, name: str = Form(...), transcript: str = Form(...),
                    file: UploadFile = File(...)) -> dict:
    """Add a voice to clone: a reference clip (`file`) and what is said in it (`transcript`)."""
    state: ServerState = request.app.state.cadenza
    data = await file.read(state.voices.max_bytes + 1)
    voice = await asyncio.to_thread(state.voices.add, name, data, transcript)
    return voice.describe()


@router.delete("/v1/audio/voices/{name}")
async def delete_voice(name: str, request: Request) -> dict:
    """Remove an uploaded voice."""
    state: ServerState = request.app.state.cadenza
    state.voices.delete(name)
    return {"id": name, "object": "voice", "deleted": True}
