"""Evaluation of Staria pieces: form adherence (see `form_adherence`), prompt following (see
`prompt_following`), music statistics, model hooks.

Music statistics follow MusPy's definitions, on millisecond times (beats are estimated, or given).
"""

from __future__ import annotations

import math
import string
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from cadenza.staria.events import DRUM, TIME_STEP_MS, MusicEvents
from cadenza.staria.form_adherence import (
    ALIKE, DISTINCT, MIN_SECTION_NOTES, PieceInput, load_piece, section_adherence, shared_tokenizer, split_sections,
)
from cadenza.staria.forms import condense, decode_sections, form_from_labels
from cadenza.staria.midi import MidiError
from cadenza.staria.prompt_following import following_rate, prompt_following, snippet_events


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
    """(predicted section per token, marker label per token) of `ids` with its section tokens removed;
    predictions are whole sections (`decode_sections`)."""
    stripped, labels = shared_tokenizer().strip_sections(np.asarray(ids, dtype=np.int64))
    probs = np.asarray(classifier_fn(stripped))
    if probs.ndim != 2 or probs.shape[0] != len(stripped):
        raise ValueError(f"classifier_fn returned shape {probs.shape}; expected ({len(stripped)}, n_sections)")
    return decode_sections(probs), labels


def recovered_form_by_classifier(classifier_fn: ClassifierFn, ids: np.ndarray) -> str:
    """The form the section classifier hears: form_from_labels of its decoded sections (no section tokens)."""
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


def heldout_perplexity(nll_fn: NllFn, corpus: str | Path, split: str = "test", limit: int | None = 100) -> dict:
    """Perplexity over the `split` pieces of a token-cache corpus (e.g. the music21 corpus' test split:
    real music no model trained on), at most `limit` of them spread over the split."""
    from cadenza.staria.cache import TokenCache
    from cadenza.staria.classifier_eval import select_pieces

    cache = TokenCache(corpus)
    indices = select_pieces(cache, split, limit)
    if not indices:
        raise ValueError(f"{corpus}: no pieces in split {split!r}")
    return {"corpus": str(corpus), "split": split, **perplexity(nll_fn, (cache.ids(i) for i in indices))}


# ---- whole pieces and directories -------------------------------------------------------------------

def evaluate_piece(x: PieceInput, form: str | None = None, classifier_fn: ClassifierFn | None = None,
                   nll_fn: NllFn | None = None, name: str | None = None,
                   snippets: dict[str, MusicEvents] | None = None) -> dict:
    """Form adherence (and the markers against a requested `form`), statistics, prompt following (given the
    prompt's `snippets`, see `prompt_following.snippet_events`) and model metrics of a piece."""
    events, marker_letters = load_piece(x, name)
    adherence = section_adherence(split_sections(events), marker_letters)
    result = {"name": name, **adherence.to_dict(), "statistics": music_statistics(events)}
    if snippets is not None:
        result["prompt_following"] = prompt_following(events, snippets)
    if form is not None:
        result["requested_form"] = form
        result["markers_match_form"] = marker_letters == form
        result["form_found"] = adherence.form_found and result["markers_match_form"]
        if not result["markers_match_form"]:
            result["reasons"] = [f"markers spell {marker_letters or '(none)'}, requested {form}",
                                 *result["reasons"]]
    if classifier_fn is not None or nll_fn is not None:
        ids = np.asarray(x, dtype=np.int64) if isinstance(x, (np.ndarray, list, tuple)) else \
            shared_tokenizer().events_to_ids(events)
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
                 nll_fn: NllFn | None = None, progress: bool = False, prompt: str | Path | None = None) -> dict:
    """Evaluate every MIDI file under `directory` (generated from `prompt`, if given: also prompt following);
    unreadable files are reported in "skipped" and left out."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory")
    snippets = snippet_events(prompt) if prompt is not None else None
    paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in (".mid", ".midi") and p.is_file())
    pieces, skipped = [], []
    iterator = paths
    if progress:
        from tqdm import tqdm
        iterator = tqdm(paths, desc="evaluate", unit="piece")
    for path in iterator:
        name = str(path.relative_to(directory))
        try:
            pieces.append(evaluate_piece(path, form, classifier_fn, nll_fn, name=name, snippets=snippets))
        except MidiError as err:
            skipped.append({"path": name, "error": str(err)})
    return {"directory": str(directory), "requested_form": form,
            "prompt": str(prompt) if prompt is not None else None, "n_files": len(paths), "n_evaluated": len(pieces),
            "skipped": skipped, "aggregate": aggregate(pieces, form),
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
    if all("prompt_following" in p for p in pieces):
        out["prompt_following"] = following_rate([p["prompt_following"]["sections"] for p in pieces])
    return out


def _first_appearance(letters: str) -> str:
    names: dict[str, str] = {}
    return "".join(names.setdefault(c, string.ascii_uppercase[len(names)]) for c in letters)
