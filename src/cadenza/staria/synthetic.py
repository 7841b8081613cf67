"""Synthetic structured pieces: the Staria recipe for music whose form and per-token sections are known.

For a form such as "ABAC", each distinct letter gets its own real source piece. A total length T is drawn
from U[1024, 4095] tokens and split into one part per form position (each part >= T / (4 n)). Every
section is the opening of its letter's source, cut at a note boundary near its part's length, so a
repeated letter replays the same opening material (optionally transposed or made louder/softer).
Sections are joined in time, one after the other, each opened by its section token, which gives every
token of the piece a section label (`StariaTokenizer.section_labels`).

Sources for the train split come from the corpus's train split only, and likewise for val and test, so
evaluation on synthetic pieces is on material the model never saw. Each piece draws from its own seeded
generator, so the output depends only on the corpus and the seed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cadenza.staria.cache import REPORT, SPLITS, TokenCache, write_cache
from cadenza.staria.events import (
    DRUM, MAX_VELOCITY, NO_SECTION, SEGMENT_MS, TIME_STEP_MS, VELOCITY_STEP, MusicEvents,
)
from cadenza.staria.forms import FORM_LABEL_MAP, LETTERS, condense, form_from_labels, form_letters
from cadenza.staria.tokenizer import StariaTokenizer

MIN_TOKENS, MAX_TOKENS = 1024, 4095
MAX_GAP_MS = 500
MIN_SECTION_FRACTION = 0.06  # above form_from_labels' 5% noise floor, so no section reads as noise
MAX_ATTEMPTS = 20
TRANSPOSITIONS = (-2, -1, 1, 2)
VELOCITY_SHIFTS = (-10, 0, 10)
META = "synthetic.json"


@dataclass
class Section:
    """One section of a synthetic piece: which source it cuts, how much of it, and how it is varied."""

    letter: str
    source: str
    n_notes: int
    start_ms: int
    transpose: int = 0
    velocity_shift: int = 0


def split_lengths(total: int, n_parts: int, rng: np.random.Generator) -> list[int]:
    """Split `total` tokens into `n_parts` random parts, each at least total / (4 n_parts).

    Parts are also at least 6% of the total (this matters from 5 parts on), so that every section stays
    above the 5% run length below which `form_from_labels` treats a run as noise.
    """
    minimum = max(-(-total // (4 * n_parts)), int(np.ceil(MIN_SECTION_FRACTION * total)))
    free = total - minimum * n_parts
    shares = rng.dirichlet(np.ones(n_parts))
    extra = np.floor(shares * free).astype(np.int64)
    extra[rng.integers(n_parts)] += free - int(extra.sum())  # rounding leftovers go to one random part
    return [minimum + int(e) for e in extra]


def note_token_costs(events: MusicEvents) -> np.ndarray:
    """Tokens each note takes in a piece: 3 (drums 2), plus the <T> tokens just before it."""
    segment = events.onset_ms // SEGMENT_MS
    n_time = np.diff(segment, prepend=0)
    return np.where(events.instrument == DRUM, 2, 3) + n_time


def opening_notes(events: MusicEvents, n_tokens: int) -> int:
    """How many notes of `events` make an opening of about `n_tokens` tokens, cut between two onsets.

    A chord is never split: the cut moves back to the start of the chord (or forward, if the opening
    would otherwise be empty).
    """
    if len(events) == 0:
        return 0
    cumulative = np.cumsum(note_token_costs(events))
    k = max(int(np.searchsorted(cumulative, n_tokens, side="right")), 1)
    onset = events.onset_ms
    if k >= len(events):
        return len(events)
    back = k
    while back > 0 and onset[back] == onset[back - 1]:
        back -= 1
    if back > 0:
        return back
    while k < len(events) and onset[k] == onset[k - 1]:
        k += 1
    return k


def varied(events: MusicEvents, transpose: int, velocity_shift: int) -> MusicEvents:
    """The same notes transposed and with velocities shifted (clipped to [10, 120]); drums stay as they are
    (a drum's pitch is its instrument, and drum tokens carry no velocity)."""
    out = events.take(slice(None))
    melodic = out.instrument != DRUM
    out.pitch = np.where(melodic, out.pitch + transpose, out.pitch)
    shifted = np.clip(out.velocity + velocity_shift, VELOCITY_STEP, MAX_VELOCITY)
    out.velocity = np.where(melodic, shifted, out.velocity)
    return out


def _safe_transpositions(events: MusicEvents) -> list[int]:
    """Transpositions that keep every melodic note inside the MIDI pitch range (so no note is lost)."""
    melodic = events.pitch[events.instrument != DRUM]
    if len(melodic) == 0:
        return list(TRANSPOSITIONS)
    low, high = int(melodic.min()), int(melodic.max())
    return [t for t in TRANSPOSITIONS if low + t >= 0 and high + t <= 127]


class SourcePool:
    """The real pieces of one split that synthetic pieces may cut sections from (events parsed lazily)."""

    def __init__(self, cache: TokenCache, indices: list[int], tokenizer: StariaTokenizer) -> None:
        self.cache, self.tokenizer = cache, tokenizer
        self.indices = np.array(indices, dtype=np.int64)
        self.lengths = np.array([len(cache.ids(i)) for i in indices], dtype=np.int64)
        self._events: dict[int, MusicEvents] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def source_id(self, i: int) -> str:
        """The manifest id of corpus piece i (its index when the manifest has no id)."""
        return str(self.cache.rows[i].get("id", i))

    def events(self, i: int) -> MusicEvents:
        """Notes of corpus piece i, without any section marks of its own."""
        if i not in self._events:
            events, _ = self.tokenizer.ids_to_events(self.cache.ids(i))
            events.section = np.full(len(events), NO_SECTION, dtype=np.int64)
            self._events[i] = events
        return self._events[i]

    def choose(self, needs: dict[str, int], rng: np.random.Generator) -> dict[str, int]:
        """One distinct random source per letter, long enough for what the letter needs if possible.

        When few sources are that long, any of the longest quarter will do (its section is then shorter
        than planned), so that long target lengths do not reuse the same few longest sources.
        """
        order = rng.permutation(len(self.indices))
        lengths = self.lengths[order]
        used = np.zeros(len(self.indices), dtype=bool)
        long_enough = int(np.quantile(self.lengths, 0.75))
        chosen: dict[str, int] = {}
        for letter in sorted(needs, key=lambda x: -needs[x]):
            free = ~used[order]
            fits = free & (lengths >= min(needs[letter], long_enough))
            if not fits.any():
                fits = free
            k = order[int(np.argmax(fits))]
            used[k] = True
            chosen[letter] = int(self.indices[k])
        return chosen


def section_letters(tokenizer: StariaTokenizer, ids: np.ndarray) -> str:
    """The letters of the section tokens of `ids` in order, e.g. "AABB" (unlike labels, not condensed)."""
    ids = np.asarray(ids, dtype=np.int64)
    found = ids[np.isin(ids, tokenizer.section_ids)]
    return "".join(LETTERS[i] for i in np.searchsorted(tokenizer.section_ids, found))


def is_well_formed(tokenizer: StariaTokenizer, ids: np.ndarray, form: str) -> bool:
    """Whether a synthetic piece spells `form`: its section tokens in order, and its labels once condensed.

    Labels cannot tell adjacent repeats apart ("AABB" labels read "AB"), so those are compared condensed.
    """
    labels_form = form_from_labels(tokenizer.section_labels(ids))
    return section_letters(tokenizer, ids) == form and labels_form == condense(form)


def synthesize_piece(form: str, pool: SourcePool, rng: np.random.Generator,
                     vary_probability: float = 0.5,
                     lengths: tuple[int, int] = (MIN_TOKENS, MAX_TOKENS),
                     ) -> tuple[np.ndarray, list[Section], int, bool]:
    """Token ids, sections, target length T and well-formedness of one synthetic piece of `form`.

    A draw whose labels would not spell the form (a section cut so short that it reads as noise) or
    that is longer than the longest allowed length + 1 is drawn again, up to MAX_ATTEMPTS times.
    """
    for _ in range(MAX_ATTEMPTS):
        ids, sections, total = _draw_piece(form, pool, rng, vary_probability, lengths)
        ok = is_well_formed(pool.tokenizer, ids, form) and len(ids) <= lengths[1] + 1
        if ok:
            break
    return ids, sections, total, ok


def _draw_piece(form: str, pool: SourcePool, rng: np.random.Generator,
                vary_probability: float, lengths: tuple[int, int]) -> tuple[np.ndarray, list[Section], int]:
    total = int(rng.integers(lengths[0], lengths[1] + 1))
    parts = split_lengths(total, len(form), rng)
    needs: dict[str, int] = {}
    for letter, part in zip(form, parts):
        needs[letter] = max(needs.get(letter, 0), part)
    sources = pool.choose(needs, rng)

    pieces: list[MusicEvents] = []
    sections: list[Section] = []
    seen: set[str] = set()
    start_ms = 0
    for letter, part in zip(form, parts):
        source = pool.events(sources[letter])
        opening = source.take(slice(0, opening_notes(source, part)))
        transpose = velocity_shift = 0
        if letter in seen and rng.random() < vary_probability:
            transpose = int(rng.choice(_safe_transpositions(opening) or [0]))
            velocity_shift = int(rng.choice(VELOCITY_SHIFTS))
        seen.add(letter)
        if len(opening):
            shift = start_ms - int(opening.onset_ms[0])
            section = varied(opening, transpose, velocity_shift).shifted(shift)
            pieces.append(section.with_section(LETTERS.index(letter)))
        sections.append(Section(letter, pool.source_id(sources[letter]), len(opening), start_ms,
                                transpose, velocity_shift))
        end_ms = pieces[-1].end_ms if pieces else start_ms
        start_ms = end_ms + int(rng.integers(0, MAX_GAP_MS // TIME_STEP_MS + 1)) * TIME_STEP_MS
    events = MusicEvents.concat(pieces)
    return pool.tokenizer.events_to_ids(events), sections, total


def _piece_rng(seed: int, split: str, form: str, k: int) -> np.random.Generator:
    """A generator of its own for each piece, so any piece can be rebuilt alone from the seed."""
    return np.random.default_rng([seed, SPLITS.index(split), FORM_LABEL_MAP[form], k])


def synthesize(corpus: str | Path, out: str | Path, per_form: int = 100, seed: int = 0,
               eval_per_form: int | None = None, vary_probability: float = 0.5,
               min_tokens: int = MIN_TOKENS, max_tokens: int = MAX_TOKENS,
               progress: bool = True) -> dict[str, int]:
    """Write a synthetic corpus to `out` (TokenCache format); returns the number of pieces per split.

    Each of the 16 forms gets `per_form` train pieces and `eval_per_form` (default per_form / 18, at
    least 1) val and test pieces, each built from sources of the same split of `corpus`. A split whose
    corpus split has too few usable sources for a 4-letter form is skipped and reported.
    """
    cache = TokenCache(corpus)
    tokenizer = StariaTokenizer()
    if eval_per_form is None:
        eval_per_form = max(1, round(per_form / 18))
    counts = {"train": per_form, "val": eval_per_form, "test": eval_per_form}
    max_letters = max(len(form_letters(form)) for form in FORM_LABEL_MAP)

    report: list[dict] = []
    pools: dict[str, SourcePool] = {}
    for split in SPLITS:
        usable = []
        for i in cache.indices(split):
            n_notes = cache.rows[i].get("n_notes")
            if n_notes is None:
                n_notes = len(tokenizer.ids_to_events(cache.ids(i))[0])
            if n_notes:
                usable.append(i)
            else:
                report.append({"path": cache.rows[i].get("path"), "id": cache.rows[i].get("id", i),
                               "reason": "source has no notes; not used"})
        if len(usable) < max_letters:
            report.append({"split": split, "reason": f"only {len(usable)} usable sources in the corpus's "
                           f"{split} split (need {max_letters}); no synthetic {split} pieces"})
            counts[split] = 0
        pools[split] = SourcePool(cache, usable, tokenizer)
    if counts["train"] == 0 and per_form > 0:
        raise ValueError(f"{corpus}: train split has {len(pools['train'])} usable pieces; synthetic pieces "
                         f"need at least {max_letters} distinct sources")

    rows: list[dict] = []
    arrays: list[np.ndarray] = []
    jobs = [(split, form, k) for split in SPLITS for form in FORM_LABEL_MAP for k in range(counts[split])]
    for split, form, k in tqdm(jobs, desc="synthesizing", unit="piece", disable=not progress):
        ids, sections, total, ok = synthesize_piece(form, pools[split], _piece_rng(seed, split, form, k),
                                                    vary_probability, (min_tokens, max_tokens))
        if not ok:
            report.append({"id": f"synth-{split}-{form}-{k}", "reason": f"no well-formed draw in "
                           f"{MAX_ATTEMPTS} attempts (sources too short?); kept the last one"})
        events, _ = tokenizer.ids_to_events(ids)
        rows.append({
            "id": f"synth-{split}-{form}-{k}",
            "source": "synthetic",
            "path": None,
            "hash": hashlib.sha1(ids.tobytes()).hexdigest(),
            "duration_s": events.end_ms / 1000,
            "n_notes": len(events),
            "split": split,
            "form": form,
            "form_label": FORM_LABEL_MAP[form],
            "sources": {s.letter: s.source for s in sections},
            "sections": [vars(s) for s in sections],
            "target_tokens": total,
        })
        arrays.append(ids)
    out = Path(out)
    write_cache(out, rows, arrays)
    (out / REPORT).write_text("".join(json.dumps(r) + "\n" for r in report))
    (out / META).write_text(json.dumps({"corpus": str(Path(corpus).resolve()), "per_form": per_form,
                                        "eval_per_form": eval_per_form, "seed": seed,
                                        "vary_probability": vary_probability, "counts": counts,
                                        "min_tokens": min_tokens, "max_tokens": max_tokens}, indent=1))
    return {split: counts[split] * len(FORM_LABEL_MAP) for split in SPLITS}
