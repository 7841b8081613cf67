"""Form adherence of Staria pieces, from the music itself.

Form adherence asks whether a piece's sections (split at its section markers or tokens) really have the
form their letters spell: sections with the same letter must share material, sections with different
letters must not. Each section is described by six complementary, transposition-aware descriptors, each
pair of sections gets a similarity per descriptor, and the descriptors are combined into one
chance-corrected similarity (0 = as alike as two unrelated sections usually are, 1 = identical).

`form_found` (strict; see `judge_form`) holds when every section has enough notes to judge, every pair
of same-letter sections reaches ALIKE and every pair of different-letter sections stays below DISTINCT.
The thresholds were calibrated on synthetic pieces with known forms and on negative controls
(`benchmarks/form_adherence_calibration.py`); the constants below say what they were measured on.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from symusic import Score

from cadenza.staria.events import DRUM, NO_SECTION, SECTION_LETTERS, TIME_STEP_MS, MusicEvents
from cadenza.staria.midi import load_score
from cadenza.staria.tokenizer import StariaTokenizer

PieceInput = Union[str, Path, bytes, Score, MusicEvents, np.ndarray, Sequence[int]]

# ---- form adherence constants (calibrated: see the module docstring) ----------------------------------
FRAME_MS = 50  # piano-roll frame; onsets are blurred over +-1 frame to tolerate small timing jitter
MAX_TRANSPOSITION = 12  # a repeat may come back in another key, up to an octave higher or lower
NGRAM = 4  # melodic n-grams: 4 (interval, inter-onset) steps = 5 notes of the top voice
IOI_EDGES_MS = np.geomspace(10, 5000, 25)
MIN_SECTION_NOTES = 20  # a shorter fragment can match another section by chance: too short to judge
DESCRIPTORS = ("roll", "ngrams", "pitch_classes", "intervals", "rhythm", "density")
# Material descriptors (piano roll, melodic n-grams) decide; the histograms add robustness to varied repeats.
WEIGHTS = {"roll": 0.35, "ngrams": 0.25, "pitch_classes": 0.1, "intervals": 0.1, "rhythm": 0.1,
           "density": 0.1}
# Median raw similarity of two sections of *different* sources (synthetic train split of the music21
# corpus): a descriptor's score is rescaled so that this chance level maps to 0 and identity to 1.
CHANCE = {"roll": 0.16, "ngrams": 0.0, "pitch_classes": 0.88, "intervals": 0.75, "rhythm": 0.24,
          "density": 0.73}
ALIKE = 0.6  # every same-letter pair must reach this combined similarity
DISTINCT = 0.45  # every different-letter pair must stay below this


# ---- pieces and sections ----------------------------------------------------------------------------

_TOKENIZER: StariaTokenizer | None = None


def shared_tokenizer() -> StariaTokenizer:
    """One StariaTokenizer for the module (built on first use)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = StariaTokenizer()
    return _TOKENIZER


def load_piece(x: PieceInput, name: str | None = None) -> tuple[MusicEvents, str]:
    """Notes of a piece (MIDI path/bytes, Score, token ids or MusicEvents) and its marker letters.

    The letters are read from the markers (MIDI) or section tokens (ids, prompt excluded) themselves, so
    a marker whose section holds no note still counts ("ABAB" with an empty last B is not "ABA"). A piece
    with notes and no marker at all is one section, "A".
    """
    tok = shared_tokenizer()
    if isinstance(x, MusicEvents):
        events = x.normalized()
        letters = "".join(SECTION_LETTERS[s] for s in x.section[x.section != NO_SECTION])
    elif isinstance(x, (np.ndarray, list, tuple)):
        ids = np.asarray(x, dtype=np.int64).ravel()
        events = tok.ids_to_events(ids)[0].normalized()
        end = np.flatnonzero(ids == tok.eos_id)
        body = ids[:end[0]] if len(end) else ids
        after_prompt = np.flatnonzero(body == tok.prompt_end_id)
        body = body[after_prompt[-1] + 1:] if len(after_prompt) else body
        found = body[np.isin(body, tok.section_ids)]
        letters = "".join(SECTION_LETTERS[i] for i in np.searchsorted(tok.section_ids, found))
    else:
        score = load_score(x, name)
        events = tok.events(score)
        texts = [m.text.strip().upper() for m in sorted(score.markers, key=lambda m: m.time)]
        letters = "".join(t for t in texts if len(t) == 1 and t in SECTION_LETTERS)
    if not letters and len(events):
        letters = "A"  # no markers at all: the piece is one section
    return events, letters


@dataclass
class PieceSection:
    """The notes of one section (times as in the piece) and where it starts and ends, in ms."""

    letter: str
    start_ms: int
    end_ms: int
    events: MusicEvents


def split_sections(events: MusicEvents) -> list[PieceSection]:
    """Cut a piece at its section starts; notes before the first start join the first section.

    A piece without any section start is one section "A"; a piece without notes has no sections.
    """
    if len(events) == 0:
        return []
    starts = np.flatnonzero(events.section != NO_SECTION)
    if len(starts) == 0:
        return [PieceSection("A", int(events.onset_ms[0]), events.end_ms, events)]
    bounds = [0, *starts[1:].tolist(), len(events)]
    sections = []
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        end = int(events.onset_ms[hi]) if hi < len(events) else events.end_ms
        sections.append(PieceSection(SECTION_LETTERS[events.section[starts[k]]], int(events.onset_ms[lo]),
                                     end, events.take(slice(lo, hi))))
    return sections


# ---- section descriptors ----------------------------------------------------------------------------

@dataclass
class SectionDescriptors:
    """What a section is compared by: its onset piano roll and five transposition-free summaries."""

    n_notes: int
    roll: np.ndarray  # (128, frames) melodic onsets, blurred over +-1 frame
    ngrams: set  # melodic n-grams of the top voice: (interval, inter-onset bin) steps
    pitch_classes: np.ndarray  # (12,) duration-weighted pitch-class histogram (compared under rotation)
    intervals: np.ndarray  # (25,) top-voice melodic intervals, clipped to an octave
    rhythm: np.ndarray  # (24,) inter-onset intervals on a log scale (drums included)
    density: float  # notes per second


def top_voice(events: MusicEvents) -> tuple[np.ndarray, np.ndarray]:
    """(onsets, pitches) of the highest melodic note at each onset (the skyline melody)."""
    melodic = events.instrument != DRUM
    onset, pitch = events.onset_ms[melodic], events.pitch[melodic]
    if len(onset) == 0:
        return onset, pitch
    order = np.lexsort((-pitch, onset))
    onset, pitch = onset[order], pitch[order]
    first = np.r_[True, onset[1:] != onset[:-1]]
    return onset[first], pitch[first]


def onset_roll(events: MusicEvents, start_ms: int) -> np.ndarray:
    """(128, frames) float32 roll of melodic note onsets from `start_ms`, each blurred over +-1 frame."""
    melodic = events.instrument != DRUM
    frame = (events.onset_ms[melodic] - start_ms) // FRAME_MS + 1
    roll = np.zeros((128, int(frame.max()) + 2 if len(frame) else 1), dtype=np.float32)
    roll[events.pitch[melodic], frame] = 1.0
    blurred = roll.copy()
    blurred[:, 1:] += 0.5 * roll[:, :-1]
    blurred[:, :-1] += 0.5 * roll[:, 1:]
    return blurred


def melodic_ngrams(events: MusicEvents, n: int = NGRAM) -> set:
    """Set of top-voice n-grams of (interval clipped to an octave, inter-onset interval in 1/3 octaves)."""
    onset, pitch = top_voice(events)
    if len(onset) < n + 1:
        return set()
    interval = np.clip(np.diff(pitch), -12, 12) + 12
    ioi_bin = np.rint(3 * np.log2(np.maximum(np.diff(onset), TIME_STEP_MS) / TIME_STEP_MS)).astype(np.int64)
    steps = interval * 64 + ioi_bin
    return {tuple(steps[i:i + n].tolist()) for i in range(len(steps) - n + 1)}


def pitch_class_profile(events: MusicEvents) -> np.ndarray:
    """(12,) duration-weighted pitch-class histogram of the melodic notes, summing to 1 (0 without notes)."""
    melodic = events.instrument != DRUM
    pc = np.bincount(events.pitch[melodic] % 12, weights=np.maximum(events.duration_ms[melodic], TIME_STEP_MS),
                     minlength=12)
    return pc / max(pc.sum(), 1e-9)


def interval_histogram(events: MusicEvents) -> np.ndarray:
    """(25,) counts of the top voice's melodic intervals, clipped to an octave (-12..12)."""
    _, pitch = top_voice(events)
    return np.bincount(np.clip(np.diff(pitch), -12, 12) + 12, minlength=25).astype(np.float64)


def describe_section(section: PieceSection) -> SectionDescriptors:
    """All descriptors of one section."""
    ev = section.events
    rhythm = np.histogram(np.diff(np.unique(ev.onset_ms)), IOI_EDGES_MS)[0].astype(np.float64)
    span_s = max((section.end_ms - section.start_ms) / 1000, 0.5)
    return SectionDescriptors(len(ev), onset_roll(ev, section.start_ms), melodic_ngrams(ev),
                              pitch_class_profile(ev), interval_histogram(ev), rhythm, len(ev) / span_s)


# ---- similarities -----------------------------------------------------------------------------------

def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two histograms (1 when both are empty, 0 when only one is)."""
    na, nb = float(a @ a), float(b @ b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b) / math.sqrt(na * nb)


def roll_similarity(a: np.ndarray, b: np.ndarray, max_transposition: int = MAX_TRANSPOSITION) -> float:
    """Best cosine between the shorter roll and any equally long window of the longer one, over time
    lags and transpositions up to `max_transposition` semitones (sections of any lengths compare).

    The window may overhang the longer roll by a quarter of the shorter one (a repeat whose pickup is
    cut off); the notes that fall outside then simply count as unmatched.
    """
    if a.shape[1] > b.shape[1]:
        a, b = b, a
    rows = np.flatnonzero(a.any(axis=1))
    if len(rows) == 0 or not b.any():
        return 1.0 if len(rows) == 0 and not b.any() else 0.0
    overhang = a.shape[1] // 4
    b = np.pad(b, ((0, 0), (overhang, overhang)))
    m, n = a.shape[1], b.shape[1]
    nfft = 1 << int(math.ceil(math.log2(m + n)))
    fa = np.conj(np.fft.rfft(a[rows], nfft, axis=1))
    fb = np.fft.rfft(b, nfft, axis=1)
    energy = np.r_[0.0, np.cumsum((b.astype(np.float64) ** 2).sum(axis=0))]
    window = np.maximum(energy[m:n + 1] - energy[:n - m + 1], 1e-9)  # energy of b[:, k:k+m]
    norm = np.sqrt(float((a.astype(np.float64) ** 2).sum()) * window)
    best = 0.0
    for shift in range(-max_transposition, max_transposition + 1):
        target = rows + shift
        ok = (target >= 0) & (target < 128)
        if not ok.any():
            continue
        corr = np.fft.irfft((fa[ok] * fb[target[ok]]).sum(axis=0), nfft)[:n - m + 1]
        best = max(best, float((corr / norm).max()))
    return min(best, 1.0)


def descriptor_similarities(a: SectionDescriptors, b: SectionDescriptors) -> dict[str, float]:
    """Raw similarity of two sections per descriptor, each in [0, 1] (1 = identical)."""
    small, large = (a.ngrams, b.ngrams) if len(a.ngrams) <= len(b.ngrams) else (b.ngrams, a.ngrams)
    ngrams = len(small & large) / len(small) if small else float(not large)
    pitch_classes = max(cosine(a.pitch_classes, np.roll(b.pitch_classes, k)) for k in range(12))
    density = min(a.density, b.density) / max(a.density, b.density, 1e-9)
    return {"roll": roll_similarity(a.roll, b.roll), "ngrams": ngrams, "pitch_classes": pitch_classes,
            "intervals": cosine(a.intervals, b.intervals), "rhythm": cosine(a.rhythm, b.rhythm),
            "density": density}


def combined_similarity(raw: dict[str, float]) -> float:
    """Weighted mean of chance-corrected descriptor similarities: (s - chance) / (1 - chance), in [0, 1]."""
    total = 0.0
    for name, weight in WEIGHTS.items():
        chance = CHANCE[name]
        total += weight * min(max((raw[name] - chance) / (1 - chance), 0.0), 1.0)
    return total / sum(WEIGHTS.values())


def similarity_matrices(sections: Sequence[PieceSection]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(combined similarity matrix, raw matrix per descriptor) of a piece's sections (diagonal 1)."""
    described = [describe_section(s) for s in sections]
    n = len(sections)
    combined = np.eye(n)
    raw = {name: np.eye(n) for name in DESCRIPTORS}
    for i in range(n):
        for j in range(i + 1, n):
            sims = descriptor_similarities(described[i], described[j])
            combined[i, j] = combined[j, i] = combined_similarity(sims)
            for name, value in sims.items():
                raw[name][i, j] = raw[name][j, i] = value
    return combined, raw


# ---- form adherence ---------------------------------------------------------------------------------

def recover_form(similarity: np.ndarray, threshold: float = (ALIKE + DISTINCT) / 2) -> str:
    """Letters from clustering sections by similarity (average linkage, merge while >= threshold),
    named by first appearance: a piece whose 1st and 3rd sections match and 2nd differs gives "ABA"."""
    n = len(similarity)
    clusters = [[i] for i in range(n)]
    while len(clusters) > 1:
        best, pair = -1.0, (0, 0)
        for p in range(len(clusters)):
            for q in range(p + 1, len(clusters)):
                link = float(similarity[np.ix_(clusters[p], clusters[q])].mean())
                if link > best:
                    best, pair = link, (p, q)
        if best < threshold:
            break
        p, q = pair
        clusters[p] = clusters[p] + clusters.pop(q)
    cluster_of = {i: k for k, members in enumerate(clusters) for i in members}
    names: dict[int, str] = {}
    for i in range(n):
        names.setdefault(cluster_of[i], string.ascii_uppercase[len(names)] if len(names) < 26 else "?")
    return "".join(names[cluster_of[i]] for i in range(n))


@dataclass
class FormAdherence:
    """Form adherence of one piece: the verdict, why, and the similarities it rests on."""

    letters: str  # letters of the sections that hold notes, in order
    marker_letters: str  # letters of all markers / section tokens, in order
    form_found: bool
    reasons: list[str]  # why form_found is False (empty when it is True)
    recovered_form: str
    similarity: np.ndarray
    descriptor_similarity: dict[str, np.ndarray]
    section_notes: list[int]
    section_spans_ms: list[tuple[int, int]]
    min_same: float | None = None  # least similar same-letter pair (None: no letter repeats)
    max_different: float | None = None  # most similar different-letter pair (None: a single letter)
    # Shortest / longest duration over same-letter pairs: a repeat much shorter than its first statement
    # is still "alike" here (it is contained in it), which a whole-section comparison may not accept.
    min_same_length_ratio: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict (matrices as nested lists, rounded)."""
        return {
            "letters": self.letters, "marker_letters": self.marker_letters, "form_found": self.form_found,
            "reasons": self.reasons, "recovered_form": self.recovered_form,
            "min_same": _round(self.min_same), "max_different": _round(self.max_different),
            "min_same_length_ratio": _round(self.min_same_length_ratio),
            "sections": [{"letter": letter, "start_ms": s, "end_ms": e, "n_notes": k} for letter, (s, e), k
                         in zip(self.letters, self.section_spans_ms, self.section_notes)],
            "similarity": np.round(self.similarity, 3).tolist(),
            "descriptor_similarity": {k: np.round(v, 3).tolist() for k, v in self.descriptor_similarity.items()},
        }


def judge_form(letters: str, similarity: np.ndarray, section_notes: Sequence[int],
               alike: float = ALIKE, distinct: float = DISTINCT) -> tuple[bool, list[str]]:
    """The strict form_found rule: (found, reasons it is not).

    Found iff (1) there is at least one section and every section has >= MIN_SECTION_NOTES notes,
    (2) every pair of sections with the same letter has similarity >= `alike`, and (3) every pair with
    different letters has similarity < `distinct` (< `alike`, so every same-letter pair is also more alike
    than every different-letter pair, and clustering recovers exactly the letters).
    """
    reasons = []
    if not letters:
        return False, ["no sections with notes"]
    for k, n in enumerate(section_notes):
        if n < MIN_SECTION_NOTES:
            reasons.append(f"section {k + 1} ({letters[k]}) has {n} notes (< {MIN_SECTION_NOTES})")
    for i in range(len(letters)):
        for j in range(i + 1, len(letters)):
            s = float(similarity[i, j])
            if letters[i] == letters[j] and s < alike:
                reasons.append(f"sections {i + 1}{letters[i]} and {j + 1}{letters[j]} not alike "
                               f"({s:.2f} < {alike})")
            elif letters[i] != letters[j] and s >= distinct:
                reasons.append(f"sections {i + 1}{letters[i]} and {j + 1}{letters[j]} not distinct "
                               f"({s:.2f} >= {distinct})")
    return not reasons, reasons


def form_adherence(x: PieceInput | list[PieceSection], letters: str | None = None) -> FormAdherence:
    """Does the material of a piece follow its section letters? (or `letters`, to relabel its sections)

    `x` is a piece (path, bytes, Score, token ids, MusicEvents) or a list of already split sections.
    """
    if isinstance(x, list) and (not x or isinstance(x[0], PieceSection)):
        sections, marker_letters = x, None
    else:
        events, marker_letters = load_piece(x)
        sections = split_sections(events)
    if letters is not None:
        if len(letters) != len(sections):
            raise ValueError(f"{len(letters)} letters {letters!r} for {len(sections)} sections")
        sections = [PieceSection(c, s.start_ms, s.end_ms, s.events) for c, s in zip(letters, sections)]
        marker_letters = None
    return section_adherence(sections, marker_letters)


def section_adherence(sections: list[PieceSection], marker_letters: str | None) -> FormAdherence:
    """Form adherence of split sections; `marker_letters` (None: the sections' letters) are the letters of
    all markers, including those whose section holds no note."""
    letters = "".join(s.letter for s in sections)
    marker_letters = letters if marker_letters is None else marker_letters
    similarity, raw = similarity_matrices(sections)
    notes = [len(s.events) for s in sections]
    found, reasons = judge_form(letters, similarity, notes)
    if marker_letters != letters:
        found = False
        reasons.insert(0, f"markers spell {marker_letters or '(none)'} but only {letters} hold notes")
    pairs = [(i, j) for i in range(len(sections)) for j in range(i + 1, len(sections))]
    same = [similarity[i, j] for i, j in pairs if letters[i] == letters[j]]
    different = [similarity[i, j] for i, j in pairs if letters[i] != letters[j]]
    spans = [max(s.end_ms - s.start_ms, 1) for s in sections]
    ratios = [min(spans[i], spans[j]) / max(spans[i], spans[j]) for i, j in pairs if letters[i] == letters[j]]
    return FormAdherence(
        letters, marker_letters, found, reasons, recover_form(similarity) if sections else "",
        similarity, raw, notes, [(s.start_ms, s.end_ms) for s in sections],
        float(min(same)) if same else None, float(max(different)) if different else None,
        float(min(ratios)) if ratios else None)


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(float(x), digits)
