"""Snippets for the contrastive encoder: two runs of consecutive notes cut from different places of one piece.

Training (`datamodule.ContrastiveDataset`, two augmented views per piece) and evaluation (`encoder_eval`,
same-piece retrieval on held-out pieces) cut them with the same code, so the encoder is measured on the
kind of snippet it learns from. A snippet is about `snippet_len / 3` notes (a melodic note is three tokens),
moved to the start of its 5 s segment, section marks removed, optionally augmented, cut to `snippet_len`
tokens. The two runs of a pair never overlap: a piece with room for two whole runs gets them at random
places, a shorter one is split into two halves at a random point, so that neither snippet is the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cadenza.staria.events import NO_SECTION, SEGMENT_MS, MusicEvents
from cadenza.staria.tokenizer import StariaTokenizer


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random changes of a view: transposition (semitones), loudness (velocity), tempo."""

    max_pitch_shift: int = 5
    velocity_shifts: tuple[int, ...] = (-10, 0, 10)
    tempo_range: tuple[float, float] = (0.9, 1.1)

    def draw(self, rng: np.random.Generator) -> tuple[int, int, float]:
        """One random (pitch shift, velocity shift, tempo scale)."""
        pitch_shift = int(rng.integers(-self.max_pitch_shift, self.max_pitch_shift + 1))
        return pitch_shift, int(rng.choice(self.velocity_shifts)), float(rng.uniform(*self.tempo_range))


NO_AUGMENTATION = (0, 0, 1.0)


def snippet_notes(snippet_len: int) -> int:
    """How many notes a snippet of `snippet_len` tokens holds (a melodic note is three tokens)."""
    return max(1, snippet_len // 3)


def pair_starts(n_events: int, n_notes: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """(start of the first run, start of the second, notes per run) for two runs of at most `n_notes`
    notes that do not overlap, in a piece of `n_events` notes (a piece of one note gives it twice)."""
    length = max(1, min(n_notes, n_events // 2))
    if n_events < 2:
        return 0, 0, length
    first = int(rng.integers(0, n_events - 2 * length + 1))
    second = int(rng.integers(first + length, n_events - length + 1))
    return first, second, length


def cut_snippet(tokenizer: StariaTokenizer, events: MusicEvents, start: int, n_notes: int, snippet_len: int,
                augmentation: tuple[int, int, float] = NO_AUGMENTATION) -> np.ndarray:
    """Token ids (int64, at most `snippet_len`) of notes [start, start + n_notes) of `events`, moved to the
    start of their segment, without section marks, with `augmentation` (pitch, velocity, tempo) applied."""
    window = events.take(slice(start, start + n_notes))
    if len(window):
        window = window.shifted(-(int(window.onset_ms[0]) // SEGMENT_MS) * SEGMENT_MS)
    window.section = np.full(len(window), NO_SECTION, dtype=np.int64)
    ids = tokenizer.augment_ids(tokenizer.events_to_ids(window), *augmentation)
    return ids[:snippet_len].astype(np.int64)
