"""Voices the server speaks in: the shipped presets and voices uploaded for cloning, kept in a directory.

An uploaded voice is NAME.wav (the reference clip, 24 kHz mono 16-bit) + NAME.txt (what is said in it), the
layout of the shipped presets. Names are checked against a strict pattern, so a name is never a path.
"""

from __future__ import annotations

import io
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from cadenza.core.audio import AudioError, resample, validate_audio
from cadenza.serve.errors import APIError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
VOICE_RATE = 24000


@dataclass
class Voice:
    """A voice: its reference clip and transcript."""

    name: str
    audio: Path
    transcript: str
    preset: bool

    def describe(self) -> dict:
        """The voice as the API lists it."""
        return {"id": self.name, "name": self.name, "object": "voice", "type": "preset" if self.preset else "uploaded",
                "transcript": self.transcript}


def check_name(name: str) -> str:
    """The name if it is a valid voice name; else a 400 naming the rule."""
    if not NAME.fullmatch(name or ""):
        raise APIError(400, f"voice name {name!r} is not valid: use 1-64 letters, digits, '-' or '_', "
                            "starting with a letter or digit", param="name", code="invalid_voice_name")
    return name


def decode_clip(data: bytes, what: str, min_seconds: float, max_seconds: float) -> np.ndarray:
    """Mono float32 audio at 24 kHz from the bytes of any file soundfile reads; a 400 saying what is wrong."""
    try:
        wav, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        wav = validate_audio(wav.mean(axis=1), what)
    except (sf.LibsndfileError, RuntimeError, TypeError, AudioError) as exc:
        raise APIError(400, f"{what}: not readable audio ({exc})", code="invalid_audio") from exc
    seconds = len(wav) / rate
    if not min_seconds <= seconds <= max_seconds:
        raise APIError(400, f"{what}: {seconds:.2f} s long; a reference clip must last {min_seconds:g} to "
                            f"{max_seconds:g} s", code="invalid_audio_duration")
    return resample(wav, rate, VOICE_RATE)


class VoiceStore:
    """Presets (read only) and uploaded voices (in `directory`, created on first use)."""

    def __init__(self, presets: dict[str, Path], directory: Path, max_bytes: int = 10 << 20,
                 min_seconds: float = 0.5, max_seconds: float = 30.0, max_transcript: int = 1000):
        self.presets, self.directory = presets, Path(directory)
        self.max_bytes, self.min_seconds, self.max_seconds = max_bytes, min_seconds, max_seconds
        self.max_transcript = max_transcript
        self._lock = threading.Lock()

    def all(self) -> list[Voice]:
        """Every voice, presets first."""
        uploaded = sorted(self.directory.glob("*.wav")) if self.directory.is_dir() else []
        found = [self._voice(name, path, True) for name, path in self.presets.items()]
        return found + [self._voice(p.stem, p, False) for p in uploaded
                        if p.stem not in self.presets and p.with_suffix(".txt").is_file()]

    def get(self, name: str) -> Voice:
        """The voice called `name`; a 400 listing the voices there are when there is none."""
        if name in self.presets:
            return self._voice(name, self.presets[name], True)
        path = self.directory / f"{name}.wav"
        if NAME.fullmatch(name) and path.is_file() and path.with_suffix(".txt").is_file():
            return self._voice(name, path, False)
        names = ", ".join(v.name for v in self.all())
        raise APIError(400, f"unknown voice {name!r}; voices: {names}", param="voice", code="voice_not_found")

    def add(self, name: str, data: bytes, transcript: str) -> Voice:
        """Store an uploaded voice after checking its name, size, audio, duration and transcript."""
        check_name(name)
        if name in self.presets:
            raise APIError(409, f"{name!r} is a shipped voice; choose another name", param="name", code="voice_exists")
        if len(data) > self.max_bytes:
            raise APIError(413, f"reference audio is {len(data)} bytes; at most {self.max_bytes}", param="file",
                           code="file_too_large")
        transcript = " ".join(transcript.split())
        if not transcript or len(transcript) > self.max_transcript:
            raise APIError(400, f"transcript must be 1-{self.max_transcript} characters of what the clip says",
                           param="transcript", code="invalid_transcript")
        wav = decode_clip(data, "reference audio", self.min_seconds, self.max_seconds)
        path = self.directory / f"{name}.wav"
        with self._lock:
            if path.exists():
                raise APIError(409, f"voice {name!r} exists; delete it first", param="name", code="voice_exists")
            self.directory.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".txt").write_text(transcript + "\n")
            sf.write(path, wav, VOICE_RATE, subtype="PCM_16")
        return self._voice(name, path, False)

    def delete(self, name: str) -> None:
        """Remove an uploaded voice (presets cannot be removed)."""
        check_name(name)
        if name in self.presets:
            raise APIError(409, f"{name!r} is a shipped voice and cannot be deleted", param="name", code="voice_is_preset")
        path = self.directory / f"{name}.wav"
        with self._lock:
            if not path.is_file():
                raise APIError(404, f"no uploaded voice {name!r}", param="name", code="voice_not_found")
            path.unlink()
            path.with_suffix(".txt").unlink(missing_ok=True)

    @staticmethod
    def _voice(name: str, audio: Path, preset: bool) -> Voice:
        return Voice(name, audio, audio.with_suffix(".txt").read_text().strip(), preset)
