"""MusicEvents: a piece as quantized note arrays, the form every Staria tool works on.

A row is one note: onset and duration in ms (multiples of the 10 ms step), pitch, quantized velocity,
instrument family index (the last index is the drum kit), and an optional section letter (0=A .. 3=D)
that marks where a section starts. Tokenizing, augmenting and stitching pieces all go through here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from cadenza.staria.midi import RawNotes, build_score
from symusic import Score

# General MIDI families in program order (program // 8). Aria keeps ten of them; we keep all sixteen so
# no note of a General MIDI file is lost, and add the drum kit last.
INSTRUMENTS = (
    "piano", "chromatic", "organ", "guitar", "bass", "strings", "ensemble", "brass",
    "reed", "pipe", "synth_lead", "synth_pad", "synth_effect", "ethnic", "percussive", "sfx", "drum",
)
DRUM = len(INSTRUMENTS) - 1
SECTION_LETTERS = "ABCD"
NO_SECTION = -1

TIME_STEP_MS = 10
SEGMENT_MS = 5000
MAX_DURATION_MS = 5000
VELOCITY_STEP = 10
MAX_VELOCITY = 120


def quantize_velocity(velocity: np.ndarray) -> np.ndarray:
    """MIDI velocity (1-127) to the nearest multiple of 10 within [10, 120]."""
    q = np.rint(np.asarray(velocity, dtype=np.float64) / VELOCITY_STEP).astype(np.int64) * VELOCITY_STEP
    return np.clip(q, VELOCITY_STEP, MAX_VELOCITY)


@dataclass
class MusicEvents:
    """Quantized notes of a piece, sorted by (onset, instrument, pitch)."""

    onset_ms: np.ndarray
    duration_ms: np.ndarray  # 0 for drums (drums carry no duration token)
    pitch: np.ndarray
    velocity: np.ndarray
    instrument: np.ndarray
    section: np.ndarray  # section letter index starting at this note, or NO_SECTION

    def __len__(self) -> int:
        return len(self.onset_ms)

    @classmethod
    def empty(cls) -> "MusicEvents":
        """A piece with no notes."""
        return cls(*(np.zeros(0, dtype=np.int64) for _ in fields(cls)))

    @classmethod
    def concat(cls, parts: list["MusicEvents"]) -> "MusicEvents":
        """Join pieces row-wise (times are kept: shift parts first to play them one after another)."""
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def take(self, index: np.ndarray | slice) -> "MusicEvents":
        """The notes at `index` (a slice, an int array or a boolean mask)."""
        return MusicEvents(*(getattr(self, f.name)[index] for f in fields(self)))

    def shifted(self, ms: int) -> "MusicEvents":
        """The same notes `ms` milliseconds later."""
        out = self.take(slice(None))
        out.onset_ms = self.onset_ms + int(ms)
        return out

    @property
    def end_ms(self) -> int:
        """Time at which the last note ends (0 for an empty piece)."""
        if len(self) == 0:
            return 0
        return int(np.max(self.onset_ms + np.maximum(self.duration_ms, TIME_STEP_MS)))

    def with_section(self, letter: int) -> "MusicEvents":
        """A copy whose first note opens section `letter` and no other note opens one."""
        out = self.take(slice(None))
        out.section = np.full(len(self), NO_SECTION, dtype=np.int64)
        if len(out):
            out.section[0] = letter
        return out

    def normalized(self) -> "MusicEvents":
        """Canonical form: quantized, in range, overlaps of one pitch on one instrument resolved, sorted.

        A note struck again before it ends is cut at the new onset (what a MIDI player does), and exact
        duplicates are dropped, so that writing the notes to a MIDI file and reading them back is stable.
        """
        step = np.maximum(np.rint(np.asarray(self.onset_ms) / TIME_STEP_MS).astype(np.int64), 0)
        instrument = np.asarray(self.instrument, dtype=np.int64)
        pitch = np.asarray(self.pitch, dtype=np.int64)
        is_drum = instrument == DRUM
        dur_steps = np.rint(np.asarray(self.duration_ms) / TIME_STEP_MS).astype(np.int64)
        dur_steps = np.where(is_drum, 0, np.clip(dur_steps, 1, MAX_DURATION_MS // TIME_STEP_MS))
        section = np.asarray(self.section, dtype=np.int64)
        voice = instrument * 128 + pitch  # < 2**12
        valid = (pitch >= 0) & (pitch <= 127)

        # One integer sort key per note (faster than lexsort): (voice, onset, longest duplicate first).
        order = np.argsort((voice << 43) | (step << 10) | (1023 - dur_steps), kind="stable")
        if not valid.all():
            order = order[valid[order]]
        v, st, du = voice[order], step[order], dur_steps[order]
        same_voice = np.r_[False, v[1:] == v[:-1]]
        duplicate = same_voice & np.r_[False, st[1:] == st[:-1]]
        if duplicate.any():
            order, v, st, du = order[~duplicate], v[~duplicate], st[~duplicate], du[~duplicate]
            same_voice = np.r_[False, v[1:] == v[:-1]]
        # A note struck again before it ends is cut at the new onset.
        next_step = np.r_[st[1:], 0]
        cut = np.r_[same_voice[1:], False] & (st + du > next_step) & (v < DRUM * 128)
        du = np.where(cut, next_step - st, du)

        final = np.argsort((st << 12) | v, kind="stable")  # by onset, instrument, pitch
        index = order[final]
        st = st[final]
        # Sections open at a time, not on one note: each lands on the first kept note at or after its
        # opening note's onset (so dropping a duplicate or an out-of-range note never loses a section).
        opens = np.flatnonzero(section != NO_SECTION)
        kept_section = np.full(len(index), NO_SECTION, dtype=np.int64)
        if len(opens):
            opens = opens[np.argsort(step[opens], kind="stable")]
            target = np.searchsorted(st, step[opens], side="left")
            inside = target < len(st)
            kept_section[target[inside]] = section[opens[inside]]
        return MusicEvents(st * TIME_STEP_MS, du[final] * TIME_STEP_MS, pitch[index],
                           quantize_velocity(np.asarray(self.velocity)[index]), instrument[index],
                           kept_section)


def join_sections(parts: list[tuple[str, MusicEvents]], gap_ms: int = 500) -> MusicEvents:
    """(letter, notes) sections played one after another, `gap_ms` apart, each opened by its letter."""
    joined, start = [], 0
    for letter, notes in parts:
        if len(notes):
            section = notes.shifted(start - int(notes.onset_ms.min())).with_section(SECTION_LETTERS.index(letter))
            joined.append(section)
            start = section.end_ms + gap_ms
    return MusicEvents.concat(joined)


def events_from_raw(raw: RawNotes, section_markers: bool = True) -> MusicEvents:
    """Quantize raw notes; markers named A-D become section starts on the first note at or after them."""
    instrument = np.where(raw.is_drum, DRUM, np.clip(raw.program, 0, 127) // 8)
    events = MusicEvents(
        onset_ms=raw.start_ms,
        duration_ms=np.where(raw.is_drum, 0.0, raw.end_ms - raw.start_ms),
        pitch=raw.pitch,
        velocity=raw.velocity,
        instrument=instrument,
        section=np.full(len(raw), NO_SECTION, dtype=np.int64),
    ).normalized()
    if section_markers and len(events):
        for time_ms, text in sorted(raw.markers):
            letter = SECTION_LETTERS.find(text.strip().upper()) if len(text.strip()) == 1 else -1
            if letter < 0:
                continue
            quantized = int(np.rint(time_ms / TIME_STEP_MS)) * TIME_STEP_MS
            i = int(np.searchsorted(events.onset_ms, quantized, side="left"))
            if i < len(events):
                events.section[i] = letter
    return events


def events_to_score(events: MusicEvents) -> Score:
    """A playable Score: one track per instrument family, section starts as markers "A", "B", ..."""
    is_drum = events.instrument == DRUM
    program = np.where(is_drum, 0, events.instrument * 8)
    duration = np.where(is_drum, TIME_STEP_MS, events.duration_ms)
    starts = np.flatnonzero(events.section != NO_SECTION)
    markers = [(int(events.onset_ms[i]), SECTION_LETTERS[events.section[i]]) for i in starts]
    return build_score(events.onset_ms, duration, events.pitch, events.velocity, program, is_drum, markers)
