"""The music API: `POST /v1/music/generations` (pieces in a form) and `POST /v1/music/evaluations` (a MIDI judged).

Generation runs on one thread of its own behind a bounded queue (a full one answers 503); the generator is
loaded on first use.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from cadenza.serve.errors import APIError, check_model, overloaded

router = APIRouter()
MUSIC_MODEL = "staria"


class MusicBody(BaseModel):
    """A request for `n` pieces in `form`, optionally seeded by the sections of a prompt MIDI."""

    model: str = MUSIC_MODEL
    form: str
    n: int = Field(1, ge=1, le=4)
    seed: int | None = None
    repeat: Literal["copy", "free"] = "copy"
    cfg: float = Field(1.0, ge=1.0, le=5.0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(1024, ge=16, le=4096)
    prompt_midi_b64: str | None = None
    formats: list[Literal["mid", "wav", "png"]] = ["mid"]


class EvaluationBody(BaseModel):
    """A MIDI file to judge, and the form its markers should spell."""

    midi_b64: str
    form: str | None = None


class MusicService:
    """The music generator on its own thread, behind a queue of at most `max_queue` requests."""

    def __init__(self, model_dir: Path | None, max_queue: int, timeout: float):
        self.model_dir, self.max_queue, self.timeout = model_dir, max_queue, timeout
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cadenza-music")
        self._pending = 0
        self._lock = threading.Lock()
        self._generator = None

    @property
    def depth(self) -> int:
        """Requests waiting or running."""
        return self._pending

    async def run(self, fn, *args):
        """`fn(generator, *args)` on the music thread; 503 when the queue is full, 504 past the timeout."""
        with self._lock:
            if self._pending >= self.max_queue:
                raise overloaded(retry_after=10)
            self._pending += 1
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn, args)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            raise APIError(504, "music generation timed out", code="timeout") from None

    def _call(self, fn, args):
        try:
            if self._generator is None:
                from cadenza.staria.generate import StariaGenerator

                self._generator = StariaGenerator.from_pretrained(self.model_dir)
            return fn(self._generator, *args)
        finally:
            with self._lock:
                self._pending -= 1

    def close(self) -> None:
        """Stop the music thread once its running request is done; drop the waiting ones."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def decode_midi(data_b64: str, what: str):
    """A symusic Score from base64 MIDI; a 400 naming `what` and the problem."""
    from cadenza.staria.midi import MidiError, load_score

    try:
        data = base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, f"{what}: not base64 ({exc})", param=what, code="invalid_base64") from exc
    try:
        return load_score(data, what)
    except MidiError as exc:
        raise APIError(400, str(exc), param=what, code="invalid_midi") from exc


def check_form(form: str) -> str:
    """The form if the generator knows it; else a 400 listing the forms it knows."""
    from cadenza.staria.forms import validate_form

    try:
        return validate_form(form)
    except ValueError as exc:
        raise APIError(400, str(exc), param="form", code="invalid_form") from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _generate(generator, body: MusicBody, prompt) -> list[dict]:
    """The pieces of a request, each with its section letters and the files asked for (base64)."""
    from cadenza.staria.generate import GenerationConfig
    from cadenza.staria.midi import render_wav
    from cadenza.staria.plots import piano_roll

    config = GenerationConfig(temperature=body.temperature, top_p=body.top_p, cfg_scale=body.cfg, repeat=body.repeat,
                              max_tokens=body.max_tokens, seed=body.seed)
    scores = generator.generate(body.form, prompt=prompt, num=body.n, config=config)
    pieces = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, score in enumerate(scores):
            piece = {"index": k, "sections": "".join(m.text for m in score.markers), "notes": score.note_num()}
            midi = Path(tmp) / f"{k}.mid"
            score.dump_midi(str(midi))
            if "mid" in body.formats:
                piece["midi_b64"] = _b64(midi.read_bytes())
            if "wav" in body.formats:
                piece["wav_b64"] = _b64(render_wav(midi, midi.with_suffix(".wav")).read_bytes())
            if "png" in body.formats:
                title = f"{body.form}, piece {k + 1}"
                piece["png_b64"] = _b64(piano_roll(midi, midi.with_suffix(".png"), title=title).read_bytes())
            pieces.append(piece)
    return pieces


@router.get("/v1/music/forms")
async def music_forms() -> dict:
    """The forms the generator follows."""
    from cadenza.staria.forms import FORM_LABEL_MAP

    return {"object": "list", "data": list(FORM_LABEL_MAP)}


@router.post("/v1/music/generations")
async def generate_music(body: MusicBody, request: Request) -> dict:
    """Pieces that follow a form: MIDI with section markers, and on request WAV and a piano roll PNG."""
    check_model(body.model, (MUSIC_MODEL,))
    check_form(body.form)
    prompt = decode_midi(body.prompt_midi_b64, "prompt_midi_b64") if body.prompt_midi_b64 else None
    pieces = await request.app.state.cadenza.music.run(_generate, body, prompt)
    return {"object": "list", "created": int(time.time()), "model": MUSIC_MODEL, "data": pieces}


def _json_safe(value):
    """Numbers and containers of a report as plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@router.post("/v1/music/evaluations")
async def evaluate_music(body: EvaluationBody) -> dict:
    """Form adherence (against `form`, if given) and music statistics of a MIDI file."""
    from cadenza.staria.piece_eval import evaluate_piece

    if body.form is not None:
        check_form(body.form)
    score = decode_midi(body.midi_b64, "midi_b64")
    try:
        report = await asyncio.to_thread(evaluate_piece, score, body.form, name="midi")
    except ValueError as exc:  # MidiError, or a piece the evaluation cannot read
        raise APIError(400, str(exc), param="midi_b64", code="invalid_midi") from exc
    return {"object": "music.evaluation", **_json_safe(report)}
