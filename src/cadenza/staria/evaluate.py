"""Evaluation of Staria pieces: form adherence from the music itself, music statistics, model hooks.

Form adherence asks whether a piece's sections (split at its section markers or tokens) really have the
form their letters spell: sections with the same letter must share material, sections with different
letters must not. Each section is described by six complementary, transposition-aware descriptors, each
pair of sections gets a similarity per descriptor, and the descriptors are combined into one
chance-corrected similarity (0 = as alike as two unrelated sections usually are, 1 = identical).

`form_found` (strict; see `judge_form`) holds when every section has enough notes to judge, every pair
of same-letter sections reaches ALIKE and every pair of different-letter sections stays below DISTINCT.
The thresholds were calibrated on synthetic pieces with known forms and on negative controls
(`benchmarks/form_adherence_calibration.py`); the constants below say what they were measured on.

Music statistics follow MusPy's definitions, on millisecond times (beats are estimated, or given).
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import numpy as np
from symusic import Score

from cadenza.staria.events import DRUM, NO_SECTION, SECTION_LETTERS, TIME_STEP_MS, MusicEvents
from cadenza.staria.forms import condense, form_from_labels
from cadenza.staria.midi import MidiError, load_score
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


def _tokenizer() -> StariaTokenizer:
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
    tok = _tokenizer()
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


def describe_section(section: PieceSection) -> SectionDescriptors:
    """All descriptors of one section."""
    ev = section.events
    melodic = ev.instrument != DRUM
    pc = np.bincount(ev.pitch[melodic] % 12, weights=np.maximum(ev.duration_ms[melodic], TIME_STEP_MS),
                     minlength=12)
    _, pitch = top_voice(ev)
    intervals = np.bincount(np.clip(np.diff(pitch), -12, 12) + 12, minlength=25).astype(np.float64)
    rhythm = np.histogram(np.diff(np.unique(ev.onset_ms)), IOI_EDGES_MS)[0].astype(np.float64)
    span_s = max((section.end_ms - section.start_ms) / 1000, 0.5)
    return SectionDescriptors(len(ev), onset_roll(ev, section.start_ms), melodic_ngrams(ev),
                              pc / max(pc.sum(), 1e-9), intervals, rhythm, len(ev) / span_s)


# ---- similarities -----------------------------------------------------------------------------------

def _cosine(a: np.ndarray, b: np.ndarray) -> float:
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
    pitch_classes = max(_cosine(a.pitch_classes, np.roll(b.pitch_classes, k)) for k in range(12))
    density = min(a.density, b.density) / max(a.density, b.density, 1e-9)
    return {"roll": roll_similarity(a.roll, b.roll), "ngrams": ngrams, "pitch_classes": pitch_classes,
            "intervals": _cosine(a.intervals, b.intervals), "rhythm": _cosine(a.rhythm, b.rhythm),
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
    return _adherence(sections, marker_letters)


def _adherence(sections: list[PieceSection], marker_letters: str | None) -> FormAdherence:
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


# ---- music statistics (MusPy definitions, ms times) -------------------------------------------------

def _melodic(events: MusicEvents) -> MusicEvents:
    return events.take(events.instrument != DRUM)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum() if counts.sum() else np.zeros(0)
    return float(-(p * np.log2(p)).sum())


def pitch_class_entropy(events: MusicEvents) -> float:
    """Shannon entropy (bits) of the note-count pitch-class histogram, drums ignored (max log2 12)."""
    return _entropy(np.bincount(_melodic(events).pitch % 12, minlength=12).astype(np.float64))


def pitch_entropy(events: MusicEvents) -> float:
    """Shannon entropy (bits) of the note-count pitch histogram, drums ignored."""
    return _entropy(np.bincount(_melodic(events).pitch, minlength=128).astype(np.float64))


_MAJOR = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1], dtype=bool)
_MINOR = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0], dtype=bool)


def scale_consistency(events: MusicEvents) -> float:
    """Largest share of notes inside one major or natural minor scale (any root), drums ignored."""
    counts = np.bincount(_melodic(events).pitch % 12, minlength=12)
    if counts.sum() == 0:
        return 0.0
    rates = [counts[np.roll(scale, root)].sum() for scale in (_MAJOR, _MINOR) for root in range(12)]
    return float(max(rates) / counts.sum())


def estimate_beat_ms(events: MusicEvents, low_ms: int = 300, high_ms: int = 1000) -> float:
    """Beat period from the autocorrelation of the onset train, with a prior peaked at 500 ms (120 bpm).

    Falls back to 500 ms when there are too few onsets to tell.
    """
    onsets = np.unique(events.onset_ms) // TIME_STEP_MS
    if len(onsets) < 8:
        return 500.0
    train = np.zeros(int(onsets.max()) + 1)
    train[onsets - onsets.min()] = 1.0
    spectrum = np.fft.rfft(train, 2 * len(train))
    autocorr = np.fft.irfft(spectrum * np.conj(spectrum))[:len(train)]
    lags = np.arange(low_ms // TIME_STEP_MS, min(high_ms // TIME_STEP_MS, len(train) - 1) + 1)
    if len(lags) == 0:
        return 500.0
    prior = np.exp(-0.5 * (np.log2(lags * TIME_STEP_MS / 500.0) / 0.7) ** 2)
    return float(lags[int(np.argmax(autocorr[lags] * prior))] * TIME_STEP_MS)


def groove_consistency(events: MusicEvents, beat_ms: float, beats_per_measure: int = 4,
                       steps_per_beat: int = 24) -> float:
    """1 - mean Hamming distance between onset patterns of neighbouring measures (MusPy), per step."""
    if len(events) == 0:
        return 0.0
    step_ms = beat_ms / steps_per_beat
    resolution = beats_per_measure * steps_per_beat
    position = np.floor(events.onset_ms / step_ms).astype(np.int64)
    n_measures = int(position.max()) // resolution + 1
    if n_measures < 2:
        return 1.0
    pattern = np.zeros((n_measures, resolution), dtype=bool)
    pattern[position // resolution, position % resolution] = True
    distance = np.count_nonzero(pattern[:-1] != pattern[1:])
    return float(1 - distance / (resolution * (n_measures - 1)))


def _sounding(events: MusicEvents) -> tuple[np.ndarray, np.ndarray]:
    start = events.onset_ms // TIME_STEP_MS
    end = start + np.maximum(events.duration_ms // TIME_STEP_MS, 1)
    return start, end


def empty_beat_rate(events: MusicEvents, beat_ms: float) -> float:
    """Share of beats (from time 0 to the last note's end) in which no note sounds (MusPy's definition)."""
    if len(events) == 0:
        return 1.0
    start, end = _sounding(events)
    beat = beat_ms / TIME_STEP_MS
    n_beats = max(int(math.ceil(end.max() / beat)), 1)
    first, last = (start / beat).astype(np.int64), ((end - 1) / beat).astype(np.int64)
    cover = np.zeros(n_beats + 1)
    np.add.at(cover, first, 1)
    np.add.at(cover, last + 1, -1)
    return float((np.cumsum(cover)[:n_beats] == 0).mean())


def polyphony(events: MusicEvents) -> tuple[float, float]:
    """(mean number of sounding pitches, share of time with >= 2) over 10 ms steps where any note sounds."""
    melodic = _melodic(events)
    if len(melodic) == 0:
        return 0.0, 0.0
    start, end = _sounding(melodic)
    count = np.zeros(int(end.max()) + 1)
    np.add.at(count, start, 1)
    np.add.at(count, end, -1)
    sounding = np.cumsum(count)[:-1]
    active = sounding[sounding > 0]
    return float(active.mean()), float((active >= 2).mean())


def music_statistics(x: PieceInput | MusicEvents, beat_ms: float | None = None) -> dict[str, float]:
    """MusPy-style statistics of a piece; the beat is estimated unless `beat_ms` is given."""
    events = x if isinstance(x, MusicEvents) else load_piece(x)[0]
    melodic = _melodic(events)
    beat = float(beat_ms) if beat_ms else estimate_beat_ms(events)
    span_s = (events.end_ms - int(events.onset_ms.min())) / 1000 if len(events) else 0.0
    mean_poly, poly_rate = polyphony(events)
    return {
        "n_notes": len(events),
        "duration_s": events.end_ms / 1000,
        "pitch_class_entropy": pitch_class_entropy(events),
        "pitch_entropy": pitch_entropy(events),
        "scale_consistency": scale_consistency(events),
        "groove_consistency": groove_consistency(events, beat),
        "empty_beat_rate": empty_beat_rate(events, beat),
        "polyphony": mean_poly,
        "polyphony_rate": poly_rate,
        "note_density": len(events) / span_s if span_s > 0 else 0.0,
        "pitch_range": int(melodic.pitch.max() - melodic.pitch.min()) if len(melodic) else 0,
        "n_pitch_classes": int(len(np.unique(melodic.pitch % 12))),
        "beat_ms": beat,
    }


# ---- model-based metrics (the models plug in here) --------------------------------------------------

ClassifierFn = Callable[[np.ndarray], np.ndarray]  # ids without section tokens -> (n_tokens, 4) probs
NllFn = Callable[[np.ndarray], tuple[float, int]]  # ids -> (summed negative log-likelihood, n tokens)


def classifier_labels(classifier_fn: ClassifierFn, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted section per token, marker label per token) of `ids` with its section tokens removed."""
    stripped, labels = _tokenizer().strip_sections(np.asarray(ids, dtype=np.int64))
    probs = np.asarray(classifier_fn(stripped))
    if probs.ndim != 2 or probs.shape[0] != len(stripped):
        raise ValueError(f"classifier_fn returned shape {probs.shape}; expected ({len(stripped)}, n_sections)")
    return probs.argmax(axis=1), labels


def recovered_form_by_classifier(classifier_fn: ClassifierFn, ids: np.ndarray) -> str:
    """The form the section classifier hears: form_from_labels of its per-token argmax (no section tokens)."""
    return form_from_labels(classifier_labels(classifier_fn, ids)[0])


def perplexity(nll_fn: NllFn, pieces: Iterable[np.ndarray]) -> dict[str, float]:
    """Token-level perplexity over pieces: exp(sum of NLL / number of predicted tokens)."""
    total_nll, total_tokens, n_pieces = 0.0, 0, 0
    for ids in pieces:
        nll, n = nll_fn(np.asarray(ids, dtype=np.int64))
        total_nll, total_tokens, n_pieces = total_nll + float(nll), total_tokens + int(n), n_pieces + 1
    if total_tokens == 0:
        return {"perplexity": float("nan"), "nll_per_token": float("nan"), "n_tokens": 0, "n_pieces": n_pieces}
    mean = total_nll / total_tokens
    return {"perplexity": math.exp(mean), "nll_per_token": mean, "n_tokens": total_tokens, "n_pieces": n_pieces}


# ---- whole pieces and directories -------------------------------------------------------------------

def evaluate_piece(x: PieceInput, form: str | None = None, classifier_fn: ClassifierFn | None = None,
                   nll_fn: NllFn | None = None, name: str | None = None) -> dict:
    """Form adherence (and the markers against a requested `form`), statistics and model metrics of a piece."""
    events, marker_letters = load_piece(x, name)
    adherence = _adherence(split_sections(events), marker_letters)
    result = {"name": name, **adherence.to_dict(), "statistics": music_statistics(events)}
    if form is not None:
        result["requested_form"] = form
        result["markers_match_form"] = marker_letters == form
        result["form_found"] = adherence.form_found and result["markers_match_form"]
        if not result["markers_match_form"]:
            result["reasons"] = [f"markers spell {marker_letters or '(none)'}, requested {form}",
                                 *result["reasons"]]
    if classifier_fn is not None or nll_fn is not None:
        ids = np.asarray(x, dtype=np.int64) if isinstance(x, (np.ndarray, list, tuple)) else \
            _tokenizer().events_to_ids(events)
        if classifier_fn is not None:
            predicted, labels = classifier_labels(classifier_fn, ids)
            result["classifier_form"] = form_from_labels(predicted)
            known = labels >= 0
            result["classifier_token_accuracy"] = (float((predicted[known] == labels[known]).mean())
                                                   if known.any() else None)
        if nll_fn is not None:
            result["perplexity"] = perplexity(nll_fn, [ids])["perplexity"]
    return result


def evaluate_dir(directory: str | Path, form: str | None = None, classifier_fn: ClassifierFn | None = None,
                 nll_fn: NllFn | None = None, progress: bool = False) -> dict:
    """Evaluate every MIDI file under `directory`; unreadable files are reported in "skipped" and left out."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory")
    paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in (".mid", ".midi") and p.is_file())
    pieces, skipped = [], []
    iterator = paths
    if progress:
        from tqdm import tqdm
        iterator = tqdm(paths, desc="evaluate", unit="piece")
    for path in iterator:
        name = str(path.relative_to(directory))
        try:
            pieces.append(evaluate_piece(path, form, classifier_fn, nll_fn, name=name))
        except MidiError as err:
            skipped.append({"path": name, "error": str(err)})
    return {"directory": str(directory), "requested_form": form, "n_files": len(paths),
            "n_evaluated": len(pieces), "skipped": skipped, "aggregate": aggregate(pieces, form),
            "thresholds": {"alike": ALIKE, "distinct": DISTINCT, "min_section_notes": MIN_SECTION_NOTES},
            "pieces": pieces}


def aggregate(pieces: list[dict], form: str | None = None) -> dict:
    """Rates and mean statistics over evaluated pieces."""
    if not pieces:
        return {"n_pieces": 0}
    out: dict = {"n_pieces": len(pieces),
                 "form_found_rate": float(np.mean([p["form_found"] for p in pieces])),
                 "recovered_matches_letters_rate": float(np.mean([p["recovered_form"] == _first_appearance(p["letters"])
                                                                  for p in pieces]))}
    if form is not None:
        out["markers_match_form_rate"] = float(np.mean([p["markers_match_form"] for p in pieces]))
        out["recovered_matches_form_rate"] = float(np.mean([p["recovered_form"] == _first_appearance(form)
                                                            for p in pieces]))
        if all("classifier_form" in p for p in pieces):
            out["classifier_form_match_rate"] = float(np.mean([p["classifier_form"] == condense(form)
                                                               for p in pieces]))
    stats = [p["statistics"] for p in pieces]
    out["statistics_mean"] = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
    if all("perplexity" in p for p in pieces):
        out["perplexity_mean"] = float(np.mean([p["perplexity"] for p in pieces]))
    return out


def _first_appearance(letters: str) -> str:
    names: dict[str, str] = {}
    return "".join(names.setdefault(c, string.ascii_uppercase[len(names)]) for c in letters)


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(float(x), digits)


def print_report(report: dict, console=None) -> None:
    """A rich table: one row per piece, then the aggregate rates and skipped files."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    requested = report.get("requested_form")
    table = Table(title=f"{report['directory']}" + (f" (form {requested})" if requested else ""),
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption=f"same: least alike same-letter pair (needs >= {ALIKE}); diff: most alike "
                          f"different-letter pair (needs < {DISTINCT}); PCE: pitch-class entropy (bits)")
    names = [str(Path(p["name"]).with_suffix("")) if p["name"] else "-" for p in report["pieces"]]
    name_width = min(max([len(n) for n in names] + [5]), 24)
    for column in ("piece", "markers", "recovered", "found", "same", "diff", "PCE", "groove", "notes"):
        table.add_column(column, justify="left" if column in ("piece", "markers", "recovered") else "right",
                         overflow="fold" if column == "piece" else "ellipsis", no_wrap=column != "piece",
                         min_width=name_width if column == "piece" else None)
    for name, p in zip(names, report["pieces"]):
        s = p["statistics"]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        table.add_row(name, p["marker_letters"], p["recovered_form"],
                      "[green]yes[/green]" if p["form_found"] else "[red]no[/red]", fmt(p["min_same"]),
                      fmt(p["max_different"]), f"{s['pitch_class_entropy']:.2f}", f"{s['groove_consistency']:.3f}",
                      str(s["n_notes"]))
    console.print(table)
    agg = report["aggregate"]
    rates = ", ".join(f"{k} {v:.0%}" for k, v in agg.items() if k.endswith("_rate"))
    console.print(f"{agg['n_pieces']} pieces evaluated" + (f": {rates}" if rates else ""))
    for bad in report["skipped"]:
        console.print(f"[yellow]skipped[/yellow] {bad['path']}: {bad['error']}")


def write_report(report: dict, path: str | Path) -> Path:
    """Write the report as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return path

