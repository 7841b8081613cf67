"""StariaTokenizer: Aria's absolute-time MIDI tokens plus Staria's section, prompt and form tokens.

A piece reads: instrument prefix tokens, `<S>`, then per note `(instrument, pitch, velocity)`,
`("onset", ms within the 5 s segment)`, `("dur", ms)` (drums: `("drum", note)`, `("onset", ms)`), a `<T>`
each time a 5000 ms segment boundary is crossed, `<A_SECTION>`.. before the note that opens a section,
and `<E>`. Tokens are strings (special) or tuples (musical), as in Aria. Both directions are vectorised
over note arrays (see `events.py`), so tokenizing costs little more than parsing the MIDI file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
from symusic import Score

from cadenza.staria.events import (
    DRUM, INSTRUMENTS, MAX_DURATION_MS, MAX_VELOCITY, NO_SECTION, SECTION_LETTERS, SEGMENT_MS,
    TIME_STEP_MS, VELOCITY_STEP, MusicEvents, events_from_raw, events_to_score,
)
from cadenza.staria.forms import FORM_LABEL_MAP
from cadenza.staria.midi import MidiInput, load_score, score_to_raw_notes

Token = Union[str, tuple]
# Bump whenever the ids produced for the same MIDI change: token caches compare it to know they are stale.
TOKENIZER_VERSION = 2

BOS, EOS, PAD, UNK, DIM, TIME = "<S>", "<E>", "<P>", "<U>", "<D>", "<T>"
SPECIAL_TOKENS = (BOS, EOS, PAD, UNK, DIM, TIME)
SECTION_TOKENS = tuple(f"<{letter}_SECTION>" for letter in SECTION_LETTERS)
PROMPT_START, PROMPT_END = "<PROMPT_START>", "<PROMPT_END>"
FORM_TOKENS = tuple(f"<{form}>" for form in FORM_LABEL_MAP)
IGNORE_INDEX = -100

N_PITCH = 128
N_VELOCITY = MAX_VELOCITY // VELOCITY_STEP
N_STEPS = SEGMENT_MS // TIME_STEP_MS
N_DURATIONS = MAX_DURATION_MS // TIME_STEP_MS

# Token kinds, used to parse id sequences without a Python loop.
K_OTHER, K_TIME, K_SECTION, K_NOTE, K_DRUM, K_ONSET, K_DUR, K_EOS, K_PROMPT_START, K_PROMPT_END = range(10)


def _build_vocab() -> list[Token]:
    vocab: list[Token] = [*SPECIAL_TOKENS, *SECTION_TOKENS, PROMPT_START, PROMPT_END, *FORM_TOKENS]
    vocab += [("prefix", "instrument", name) for name in INSTRUMENTS]
    vocab += [("onset", i * TIME_STEP_MS) for i in range(N_STEPS)]
    vocab += [("dur", (i + 1) * TIME_STEP_MS) for i in range(N_DURATIONS)]
    vocab += [("drum", p) for p in range(N_PITCH)]
    vocab += [
        (name, p, (v + 1) * VELOCITY_STEP)
        for name in INSTRUMENTS[:DRUM] for p in range(N_PITCH) for v in range(N_VELOCITY)
    ]
    return vocab


def _as_token(t) -> Token:
    """Tokens that went through JSON come back as lists; make them tuples again."""
    return tuple(t) if isinstance(t, list) else t


class StariaTokenizer:
    """Aria absolute-time MIDI tokenizer with Staria section/prompt/form tokens (vocab fixed by code)."""

    def __init__(self) -> None:
        self.vocab: list[Token] = _build_vocab()
        self.token_to_id: dict[Token, int] = {t: i for i, t in enumerate(self.vocab)}
        ids = self.token_to_id
        self.bos_id, self.eos_id, self.pad_id = ids[BOS], ids[EOS], ids[PAD]
        self.unk_id, self.dim_id, self.time_id = ids[UNK], ids[DIM], ids[TIME]
        self.prompt_start_id, self.prompt_end_id = ids[PROMPT_START], ids[PROMPT_END]
        self.section_ids = np.array([ids[t] for t in SECTION_TOKENS])
        self.form_ids = {form: ids[f"<{form}>"] for form in FORM_LABEL_MAP}
        self._prefix_base = ids[("prefix", "instrument", INSTRUMENTS[0])]
        self._onset_base = ids[("onset", 0)]
        self._dur_base = ids[("dur", TIME_STEP_MS)]
        self._drum_base = ids[("drum", 0)]
        self._note_base = ids[(INSTRUMENTS[0], 0, VELOCITY_STEP)]
        self._kind = np.full(len(self.vocab), K_OTHER, dtype=np.int8)
        self._kind[self.time_id] = K_TIME
        self._kind[self.section_ids] = K_SECTION
        self._kind[self.eos_id] = K_EOS
        self._kind[self.prompt_start_id] = K_PROMPT_START
        self._kind[self.prompt_end_id] = K_PROMPT_END
        self._kind[self._onset_base:self._onset_base + N_STEPS] = K_ONSET
        self._kind[self._dur_base:self._dur_base + N_DURATIONS] = K_DUR
        self._kind[self._drum_base:self._drum_base + N_PITCH] = K_DRUM
        self._kind[self._note_base:] = K_NOTE

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def fingerprint(self) -> str:
        """A short name for this tokenizer's output (vocabulary + TOKENIZER_VERSION), for cache checks."""
        vocab = [list(t) if isinstance(t, tuple) else t for t in self.vocab]
        text = json.dumps([vocab, TOKENIZER_VERSION])
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.vocab)

    # ---- MIDI -> tokens -------------------------------------------------------------------------

    def events(self, x: MidiInput, name: str | None = None) -> MusicEvents:
        """Quantized notes of a MIDI path, bytes or Score (markers "A".."D" become section starts)."""
        return events_from_raw(score_to_raw_notes(load_score(x, name)))

    def tokenize(self, x: MidiInput, name: str | None = None) -> list[Token]:
        """Tokens of a MIDI path, bytes or symusic.Score; raises MidiError naming a file that is not MIDI."""
        return self.decode(self.tokenize_ids(x, name))

    def tokenize_ids(self, x: MidiInput, name: str | None = None) -> np.ndarray:
        """Token ids (int32) of a MIDI input: the same as `encode(tokenize(x))`, but faster."""
        return self._normalized_events_to_ids(self.events(x, name))

    def events_to_ids(self, events: MusicEvents) -> np.ndarray:
        """Token ids of notes: prefix, <S>, notes with <T> and section tokens, <E>."""
        return self._normalized_events_to_ids(events.normalized())

    def _normalized_events_to_ids(self, ev: MusicEvents) -> np.ndarray:
        n = len(ev)
        is_drum = ev.instrument == DRUM
        segment = ev.onset_ms // SEGMENT_MS
        n_time = np.diff(segment, prepend=0)  # <T> tokens before each note
        has_section = ev.section != NO_SECTION
        n_body = np.where(is_drum, 2, 3)
        group_len = n_time + has_section + n_body
        group_start = np.cumsum(group_len) - group_len

        instruments_present = np.flatnonzero(np.bincount(ev.instrument, minlength=len(INSTRUMENTS)))
        head = np.r_[self._prefix_base + instruments_present, self.bos_id].astype(np.int32)
        body = np.empty(int(group_len.sum()), dtype=np.int32)
        # A group is [section token] <T>* note: the section token comes first so that the <T> tokens
        # between two sections carry the new section's label.
        if has_section.any():
            body[group_start[has_section]] = self.section_ids[ev.section[has_section]]
        if n_time.any():
            time_pos = np.repeat(group_start + has_section, n_time) + _ranges(n_time)
            body[time_pos] = self.time_id
        note_pos = group_start + n_time + has_section
        velocity_index = ev.velocity // VELOCITY_STEP - 1
        note_id = self._note_base + (ev.instrument * N_PITCH + ev.pitch) * N_VELOCITY + velocity_index
        body[note_pos] = np.where(is_drum, self._drum_base + ev.pitch, note_id)
        body[note_pos + 1] = self._onset_base + (ev.onset_ms % SEGMENT_MS) // TIME_STEP_MS
        melodic = ~is_drum
        body[note_pos[melodic] + 2] = self._dur_base + ev.duration_ms[melodic] // TIME_STEP_MS - 1
        assert n == 0 or body.min() >= 0
        return np.concatenate([head, body, np.array([self.eos_id], dtype=np.int32)])

    # ---- tokens -> MIDI -------------------------------------------------------------------------

    def ids_to_events(self, ids: Sequence[int] | np.ndarray) -> tuple[MusicEvents, int]:
        """Parse ids into notes; returns (events, number of invalid or orphaned tokens dropped).

        Never raises on any id sequence: out-of-range ids, notes missing their onset or duration and
        stray onset/duration tokens are dropped and counted. Prompt regions are not part of the piece
        and are skipped; everything after the first `<E>` is ignored.
        """
        ids = np.asarray(ids, dtype=np.int64).ravel()
        valid_id = (ids >= 0) & (ids < len(self.vocab))
        dropped = int((~valid_id).sum())
        ids = ids[valid_id]
        kind = self._kind[ids]
        eos = np.flatnonzero(kind == K_EOS)
        if len(eos):
            ids, kind = ids[: eos[0]], kind[: eos[0]]
        keep = ~_inside_prompt(kind)
        ids, kind = ids[keep], kind[keep]

        padded = np.r_[kind, K_OTHER, K_OTHER]
        nxt1, nxt2 = padded[1:len(kind) + 1], padded[2:len(kind) + 2]
        note_start = ((kind == K_NOTE) & (nxt1 == K_ONSET) & (nxt2 == K_DUR)) | (
            (kind == K_DRUM) & (nxt1 == K_ONSET)
        )
        starts = np.flatnonzero(note_start)
        used = np.zeros(len(ids), dtype=bool)
        used[starts] = used[starts + 1] = True
        melodic = kind[starts] == K_NOTE
        used[starts[melodic] + 2] = True
        musical = np.isin(kind, (K_NOTE, K_DRUM, K_ONSET, K_DUR))
        dropped += int((musical & ~used).sum())

        segment = np.cumsum(kind == K_TIME)[starts]
        onset = segment * SEGMENT_MS + (ids[starts + 1] - self._onset_base) * TIME_STEP_MS
        duration = np.zeros(len(starts), dtype=np.int64)
        duration[melodic] = (ids[starts[melodic] + 2] - self._dur_base + 1) * TIME_STEP_MS
        note_index = ids[starts] - self._note_base
        pitch = np.where(melodic, (note_index // N_VELOCITY) % N_PITCH, ids[starts] - self._drum_base)
        velocity = np.where(melodic, (note_index % N_VELOCITY + 1) * VELOCITY_STEP, MAX_VELOCITY)
        instrument = np.where(melodic, note_index // (N_VELOCITY * N_PITCH), DRUM)

        section = np.full(len(starts), NO_SECTION, dtype=np.int64)
        section_pos = np.flatnonzero(kind == K_SECTION)
        target = np.searchsorted(starts, section_pos)  # the note each section token precedes
        has_note = target < len(starts)
        section[target[has_note]] = np.searchsorted(self.section_ids, ids[section_pos[has_note]])
        events = MusicEvents(onset, duration, pitch, velocity, instrument, section)
        return events, dropped

    def detokenize(self, tokens: Iterable[Token] | Sequence[int] | np.ndarray,
                   return_dropped: bool = False) -> Score | tuple[Score, int]:
        """A symusic Score of tokens or ids; section tokens become markers "A", "B", ...

        Invalid tokens are dropped (never raises); with `return_dropped` also returns how many.
        """
        ids = self._as_ids(tokens)
        events, dropped = self.ids_to_events(ids)
        score = events_to_score(events.normalized())
        return (score, dropped) if return_dropped else score

    # ---- vocabulary -----------------------------------------------------------------------------

    def encode(self, tokens: Iterable[Token]) -> list[int]:
        """Token ids of tokens (unknown tokens become <U>)."""
        lookup, unk = self.token_to_id.get, self.unk_id
        return [lookup(_as_token(t), unk) for t in tokens]

    def decode(self, ids: Iterable[int] | np.ndarray) -> list[Token]:
        """Tokens of ids (out-of-range ids become <U>)."""
        vocab, n, unk = self.vocab, len(self.vocab), UNK
        return [vocab[i] if 0 <= i < n else unk for i in np.asarray(ids, dtype=np.int64).tolist()]

    def _as_ids(self, tokens) -> np.ndarray:
        if isinstance(tokens, np.ndarray):
            return tokens.astype(np.int64)
        tokens = list(tokens)
        if all(isinstance(t, (int, np.integer)) for t in tokens):
            return np.asarray(tokens, dtype=np.int64)
        # Unknown tokens map to an out-of-range id so that they are dropped and counted.
        return np.asarray([self.token_to_id.get(_as_token(t), -1) for t in tokens], dtype=np.int64)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON (tuple tokens as lists)."""
        Path(path).write_text(json.dumps({"tokenizer": "staria", "vocab": self.vocab}))

    @classmethod
    def load(cls, path: str | Path) -> "StariaTokenizer":
        """Load a vocabulary saved by `save`, checking that it matches this code's vocabulary."""
        data = json.loads(Path(path).read_text())
        tok = cls()
        saved = [_as_token(t) for t in data.get("vocab", [])]
        if saved != tok.vocab:
            raise ValueError(f"{path}: vocabulary does not match this version of StariaTokenizer "
                             f"({len(saved)} saved tokens vs {len(tok.vocab)})")
        return tok

    # ---- sections, forms and augmentation -------------------------------------------------------

    @property
    def onset_range(self) -> tuple[int, int]:
        """[first, last + 1) ids of the onset tokens."""
        return self._onset_base, self._onset_base + N_STEPS

    @property
    def duration_range(self) -> tuple[int, int]:
        """[first, last + 1) ids of the duration tokens."""
        return self._dur_base, self._dur_base + N_DURATIONS

    def kinds(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Token kind (K_NOTE, K_DRUM, K_ONSET, K_DUR, K_TIME, K_SECTION, ...) of each id."""
        return self._kind[np.clip(np.asarray(ids, dtype=np.int64), 0, len(self.vocab) - 1)]

    def instrument_prefix(self, ids: Sequence[int] | np.ndarray) -> list[int]:
        """Prefix token ids of the instruments (drum kit included) that play in `ids`."""
        ids = np.asarray(ids, dtype=np.int64)
        kind = self.kinds(ids)
        melodic = (ids[kind == K_NOTE] - self._note_base) // (N_PITCH * N_VELOCITY)
        present = set(melodic.tolist()) | ({DRUM} if (kind == K_DRUM).any() else set())
        return [self._prefix_base + i for i in sorted(present)]

    def note_features(self) -> np.ndarray:
        """(vocab, 3) int table of what each id means as a note: pitch (1-128 melodic, 129-256 drum sound),
        velocity step (1..) and instrument (1.., drums last); 0 where an id is not a note. Models embed
        these so that the same pitch at another velocity, or a transposed repeat, looks alike."""
        table = np.zeros((len(self.vocab), 3), dtype=np.int64)
        drums = np.arange(self._drum_base, self._drum_base + N_PITCH)
        table[drums] = np.stack([1 + N_PITCH + np.arange(N_PITCH), np.zeros(N_PITCH), np.full(N_PITCH, 1 + DRUM)], 1)
        note = np.arange(len(self.vocab) - self._note_base)
        table[self._note_base:] = np.stack([1 + (note // N_VELOCITY) % N_PITCH, 1 + note % N_VELOCITY,
                                            1 + note // (N_PITCH * N_VELOCITY)], axis=1)
        return table

    def is_note(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Boolean mask of ids that start a note (melodic or drum)."""
        kind = self._kind[np.clip(np.asarray(ids, dtype=np.int64), 0, len(self.vocab) - 1)]
        return (kind == K_NOTE) | (kind == K_DRUM)

    def section_token_id(self, letter: str) -> int:
        """Id of `<A_SECTION>` .. `<D_SECTION>`."""
        return int(self.section_ids[SECTION_LETTERS.index(letter)])

    def section_labels(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Per-token section letter index (0=A ..), carried forward from each section token.

        Tokens before the first section token take the first section's label; a sequence without any
        section token gets IGNORE_INDEX everywhere.
        """
        ids = np.asarray(ids, dtype=np.int64)
        is_section = self._kind[np.clip(ids, 0, len(self.vocab) - 1)] == K_SECTION
        if not is_section.any():
            return np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        letters = np.searchsorted(self.section_ids, ids[is_section])
        run = np.maximum(np.cumsum(is_section) - 1, 0)
        return letters[run]

    def strip_sections(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids without section tokens, their per-token labels): what the section classifier sees."""
        ids = np.asarray(ids, dtype=np.int64)
        labels = self.section_labels(ids)
        keep = self._kind[np.clip(ids, 0, len(self.vocab) - 1)] != K_SECTION
        return ids[keep], labels[keep]

    def augment_ids(self, ids: np.ndarray, pitch_shift: int = 0, velocity_shift: int = 0,
                    tempo_scale: float = 1.0) -> np.ndarray:
        """Ids of the same piece transposed, louder/softer and faster/slower (drums keep their pitch).

        Notes pushed out of the MIDI pitch range are dropped; velocities clip to [10, 120].
        """
        events, _ = self.ids_to_events(ids)
        melodic = events.instrument != DRUM
        events.pitch = np.where(melodic, events.pitch + pitch_shift, events.pitch)
        events.velocity = np.clip(events.velocity + velocity_shift, VELOCITY_STEP, MAX_VELOCITY)
        if tempo_scale != 1.0:
            events.onset_ms = events.onset_ms / tempo_scale
            events.duration_ms = events.duration_ms / tempo_scale
        return self.events_to_ids(events)

    def augment(self, tokens: Iterable[Token], pitch_shift: int = 0, velocity_shift: int = 0,
                tempo_scale: float = 1.0) -> list[Token]:
        """Token version of `augment_ids`."""
        return self.decode(self.augment_ids(self._as_ids(tokens), pitch_shift, velocity_shift, tempo_scale))


def _ranges(counts: np.ndarray) -> np.ndarray:
    """Concatenated aranges: [0..c0-1, 0..c1-1, ...]."""
    total = int(counts.sum())
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - offsets


def _inside_prompt(kind: np.ndarray) -> np.ndarray:
    """Mask of tokens from each <PROMPT_START> up to and including the next <PROMPT_END> (or the end)."""
    mask = np.zeros(len(kind), dtype=bool)
    starts = np.flatnonzero(kind == K_PROMPT_START)
    if len(starts) == 0:
        return mask
    ends = np.flatnonzero(kind == K_PROMPT_END)
    pos = 0
    for s in starts:
        if s < pos:
            continue
        later = ends[ends > s]
        e = int(later[0]) if len(later) else len(kind) - 1
        mask[s:e + 1] = True
        pos = e + 1
    return mask
