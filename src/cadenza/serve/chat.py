"""Audio chat completions, as the Higgs Audio server answers them: the last user message is spoken.

A voice comes from `audio.voice` or is cloned from an `input_audio` part (base64) in the messages; its
transcript is the text beside it, or the user message just before it (the user/assistant reference pair
of Higgs Audio prompts). The answer is base64 audio in `choices[0].message.audio.data`; with `stream`, chunks
carry `delta.audio.data` (16-bit PCM, as OpenAI streams audio) and end with `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from cadenza.serve.audio_formats import encode, pcm16
from cadenza.serve.errors import APIError, check_model
from cadenza.serve.speech import SPEECH_MODELS, collect, first_then_rest, submit
from cadenza.serve.speech_engine import AudioContent
from cadenza.serve.state import ServerState
from cadenza.serve.voices import decode_clip

router = APIRouter()
CHAT_MODELS = (*SPEECH_MODELS, "gpt-4o-audio-preview", "gpt-4o-mini-audio-preview")
FORMATS = {"wav": "wav", "mp3": "mp3", "flac": "flac", "opus": "opus", "pcm16": "pcm"}


class AudioOptions(BaseModel):
    """`audio` of an audio chat request."""

    voice: str | None = None
    format: Literal["wav", "mp3", "flac", "opus", "pcm16"] = "wav"


class ChatBody(BaseModel):
    """The fields of an audio chat completion request this server reads."""

    model: str = "higgs-audio"
    messages: list[dict] = Field(min_length=1)
    modalities: list[str] = ["text", "audio"]
    audio: AudioOptions = AudioOptions()
    stream: bool = False
    seed: int | None = None
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_completion_tokens: int | None = Field(None, ge=1)


def _parts(message: dict, index: int) -> list[dict]:
    """A message's content as a list of parts; a 400 naming the message when it is malformed."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        raise APIError(400, f"messages[{index}].content must be a string or a list of parts", param=f"messages[{index}]")
    return content


def _text(parts: list[dict]) -> str:
    return " ".join(p.get("text", "") for p in parts if p.get("type") == "text").strip()


def read_messages(messages: list[dict], max_ref_seconds: float) -> tuple[str, str | None, tuple[AudioContent, str] | None]:
    """(text to speak, scene from the system message, cloned voice) of a chat's messages."""
    parts = [_parts(m, i) for i, m in enumerate(messages)]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user" and _text(parts[i])]
    if not users:
        raise APIError(400, "no user message with text to speak", param="messages", code="no_text")
    scene = next((_text(parts[i]) for i, m in enumerate(messages) if m.get("role") == "system"), None)
    for i, message_parts in enumerate(parts):
        for part in message_parts:
            if part.get("type") != "input_audio":
                continue
            data = (part.get("input_audio") or {}).get("data", "")
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise APIError(400, f"messages[{i}]: input_audio.data is not base64 ({exc})",
                               param=f"messages[{i}]", code="invalid_base64") from exc
            decode_clip(raw, f"messages[{i}] input_audio", 0.1, max_ref_seconds)
            transcript = _text(message_parts) or next(
                (_text(parts[j]) for j in range(i - 1, -1, -1) if messages[j].get("role") == "user"), "")
            if not transcript or i == users[-1]:
                raise APIError(400, f"messages[{i}]: input_audio needs its transcript: a user message with the "
                                    "words of the clip, before the assistant message that holds it",
                               param=f"messages[{i}]", code="no_reference_text")
            return _text(parts[users[-1]]), scene, (AudioContent(raw_audio=data), transcript)
    return _text(parts[users[-1]]), scene, None


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatBody, request: Request):
    """Speak the last user message (OpenAI's audio chat completion)."""
    state: ServerState = request.app.state.cadenza
    check_model(body.model, CHAT_MODELS)
    if "audio" not in body.modalities:
        raise APIError(400, "this model answers in audio: ask for modalities ['text', 'audio']", param="modalities")
    if body.stream and body.audio.format != "pcm16":
        raise APIError(400, "streamed audio is 16-bit PCM: ask for audio.format 'pcm16'", param="audio.format")
    text, scene, voice = await asyncio.to_thread(read_messages, body.messages, state.voices.max_seconds)
    if voice is None:
        voice = state.voice_reference(body.audio.voice)
    job = submit(state, text, voice, scene, body.seed, body.temperature, body.max_completion_tokens)
    ids = f"chatcmpl-{uuid.uuid4().hex}", f"audio_{uuid.uuid4().hex}"
    if body.stream:
        pieces = await first_then_rest(job, state)
        return StreamingResponse(_chunks(pieces, job, text, body.model, ids), media_type="text/event-stream")
    audio = await collect(job, state, request)
    rate = state.speech_worker().sampling_rate
    message = {"role": "assistant", "content": None,
               "audio": {"id": ids[1], "data": base64.b64encode(encode(audio, rate, FORMATS[body.audio.format])).decode(),
                         "expires_at": int(time.time()) + 3600, "transcript": text}}
    return {"id": ids[0], "object": "chat.completion", "created": int(time.time()), "model": body.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": _usage(job.usage)}


def _usage(usage: dict) -> dict:
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _chunks(pieces: AsyncIterator, job, text: str, model: str, ids: tuple[str, str]) -> AsyncIterator[str]:
    """Server-sent chat.completion.chunk events: the role, audio deltas, the transcript and finish reason, [DONE]."""
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        body = {"id": ids[0], "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": None})
    try:
        async for piece in pieces:
            yield chunk({"audio": {"id": ids[1], "data": base64.b64encode(pcm16(piece)).decode()}})
    except APIError as exc:
        yield f"data: {json.dumps({'error': {'message': exc.message, 'code': exc.code}})}\n\n"
        return
    yield chunk({"audio": {"id": ids[1], "transcript": text}}, "stop", usage=_usage(job.usage))
    yield "data: [DONE]\n\n"
