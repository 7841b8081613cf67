"""MIDI files in and out: validated loading, notes in milliseconds (pedal folded), section markers, audio.

Everything here speaks milliseconds. Scores we write use 500 ticks per quarter at 120 bpm, so one tick is
exactly one millisecond and a note written here is read back at the same time.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from symusic import Note, Score, Tempo, TextMeta, Track

MidiInput = Union[str, Path, bytes, Score]

TICKS_PER_QUARTER = 500  # with 120 bpm, 1 tick == 1 ms
DRUM_CHANNEL_NAME = "drums"
SOUNDFONT_PATHS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
)


class MidiError(ValueError):
    """A file or byte string is not usable MIDI; the message names the input and the problem."""


@dataclass
class RawNotes:
    """Every note of a score in milliseconds, one row per note (float times, pedal already folded in)."""

    start_ms: np.ndarray  # float64
    end_ms: np.ndarray  # float64
    pitch: np.ndarray  # int64
    velocity: np.ndarray  # int64
    program: np.ndarray  # int64, 0-127 (ignored for drums)
    is_drum: np.ndarray  # bool
    markers: list[tuple[float, str]]  # (time_ms, text)

    def __len__(self) -> int:
        return len(self.start_ms)


def _check_midi_bytes(data: bytes, name: str) -> None:
    if len(data) == 0:
        raise MidiError(f"{name}: empty file (0 bytes), not MIDI")
    if data[:4] == b"RIFF":
        if data[8:12] == b"RMID":
            return
        kind = "a WAV audio file" if data[8:12] == b"WAVE" else "a RIFF file"
        raise MidiError(f"{name}: not MIDI, looks like {kind} (starts with 'RIFF')")
    if data[:4] != b"MThd":
        raise MidiError(f"{name}: not a MIDI file (missing 'MThd' header; starts with {data[:8]!r})")
    if len(data) < 14:
        raise MidiError(f"{name}: truncated MIDI header ({len(data)} bytes)")
    if b"MTrk" not in data[14:]:
        raise MidiError(f"{name}: MIDI header only, the file has no track chunk ('MTrk')")


def load_score(x: MidiInput, name: str | None = None) -> Score:
    """Parse a path, MIDI bytes or a Score into a symusic Score, raising MidiError naming the input."""
    if isinstance(x, Score):
        return x
    if isinstance(x, (str, Path)):
        name = name or str(x)
        try:
            data = Path(x).read_bytes()
        except OSError as err:
            raise MidiError(f"{name}: cannot read file ({err.strerror or err})") from err
    elif isinstance(x, (bytes, bytearray, memoryview)):
        name = name or "<bytes>"
        data = bytes(x)
    else:
        raise TypeError(f"expected a path, bytes or symusic.Score, got {type(x).__name__}")
    _check_midi_bytes(data, name)
    try:
        return Score.from_midi(data, sanitize_data=True)
    except Exception as err:  # symusic raises RuntimeError/ValueError with terse messages
        raise MidiError(f"{name}: corrupt MIDI ({err})") from err


def _fold_pedal(end_s: np.ndarray, pedal_start: np.ndarray, pedal_end: np.ndarray) -> np.ndarray:
    """Extend note ends that fall while the sustain pedal is down to the pedal's release."""
    if len(pedal_start) == 0:
        return end_s
    order = np.argsort(pedal_start, kind="stable")
    pedal_start, pedal_end = pedal_start[order], pedal_end[order]
    # Overlapping pedal spans (rare, malformed) are merged by a running maximum of their ends.
    pedal_end = np.maximum.accumulate(pedal_end)
    idx = np.searchsorted(pedal_start, end_s, side="right") - 1
    held = (idx >= 0) & (end_s < pedal_end[np.maximum(idx, 0)])
    return np.where(held, pedal_end[np.maximum(idx, 0)], end_s)


def score_to_raw_notes(score: Score) -> RawNotes:
    """All notes of a score with times in ms (tempo map applied, sustain pedal folded into durations)."""
    sec = score.to("second") if score.ttype != "Second" else score
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("start", "end", "pitch", "vel", "prog", "drum")}
    for track in sec.tracks:
        if track.note_num() == 0:
            continue
        arr = track.notes.numpy()
        start = arr["time"].astype(np.float64)
        end = start + np.maximum(arr["duration"].astype(np.float64), 0.0)
        if not track.is_drum and len(track.pedals):
            ped = track.pedals.numpy()
            ped_start = ped["time"].astype(np.float64)
            end = _fold_pedal(end, ped_start, ped_start + ped["duration"].astype(np.float64))
        n = len(start)
        cols["start"].append(start * 1000.0)
        cols["end"].append(end * 1000.0)
        cols["pitch"].append(arr["pitch"].astype(np.int64))
        cols["vel"].append(arr["velocity"].astype(np.int64))
        cols["prog"].append(np.full(n, track.program, dtype=np.int64))
        cols["drum"].append(np.full(n, bool(track.is_drum)))
    markers = [(float(m.time) * 1000.0, m.text) for m in sec.markers]

    def cat(key: str, dtype) -> np.ndarray:
        return np.concatenate(cols[key]) if cols[key] else np.zeros(0, dtype=dtype)

    return RawNotes(
        start_ms=cat("start", np.float64),
        end_ms=cat("end", np.float64),
        pitch=cat("pitch", np.int64),
        velocity=cat("vel", np.int64),
        program=cat("prog", np.int64),
        is_drum=cat("drum", bool),
        markers=markers,
    )


def build_score(
    start_ms: np.ndarray,
    duration_ms: np.ndarray,
    pitch: np.ndarray,
    velocity: np.ndarray,
    program: np.ndarray,
    is_drum: np.ndarray,
    markers: list[tuple[int, str]] = (),
) -> Score:
    """A Score with one track per (program, drum) pair; times are integer ms (1 tick == 1 ms)."""
    score = Score(TICKS_PER_QUARTER)
    score.tempos.append(Tempo(0, qpm=120.0))
    keys = np.stack([np.asarray(is_drum, dtype=np.int64), np.asarray(program, dtype=np.int64)], axis=1)
    for drum, prog in sorted({(int(d), int(p)) for d, p in keys}):
        sel = (keys[:, 0] == drum) & (keys[:, 1] == prog)
        track = Track(name=DRUM_CHANNEL_NAME if drum else f"program {prog}", program=0 if drum else prog,
                      is_drum=bool(drum))
        track.notes.extend(
            Note(int(t), int(d), int(p), int(v))
            for t, d, p, v in zip(start_ms[sel], duration_ms[sel], pitch[sel], velocity[sel])
        )
        score.tracks.append(track)
    for time_ms, text in markers:
        score.markers.append(TextMeta(int(time_ms), text))
    return score


def find_soundfont() -> Path:
    """The General MIDI soundfont installed by `make setup` (Debian's fluid-soundfont-gm)."""
    for candidate in SOUNDFONT_PATHS:
        if Path(candidate).exists():
            return Path(candidate)
    raise FileNotFoundError(
        "no General MIDI soundfont found (looked in " + ", ".join(SOUNDFONT_PATHS) + "); run `make setup`"
    )


def render_wav(midi: MidiInput, out_wav: str | Path, soundfont: str | Path | None = None,
               sample_rate: int = 44100) -> Path:
    """Render MIDI to a WAV file with fluidsynth and a GM soundfont."""
    if shutil.which("fluidsynth") is None:
        raise RuntimeError("fluidsynth is not installed; run `make setup`")
    out_wav = Path(out_wav)
    out_wav.parent.mkdir(parents=True, exist_ok=True)
    midi_path = out_wav.with_suffix(".render.mid")
    load_score(midi).dump_midi(str(midi_path))
    try:
        subprocess.run(
            ["fluidsynth", "-ni", "-q", "-g", "0.8", "-r", str(sample_rate), "-F", str(out_wav),
             str(soundfont or find_soundfont()), str(midi_path)],
            check=True, capture_output=True, timeout=600,
        )
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"fluidsynth failed on {midi_path}: {err.stderr.decode(errors='replace')}") from err
    finally:
        midi_path.unlink(missing_ok=True)
    return out_wav
