"""Prompt following: does each generated section resemble its own prompt snippet more than the others?

The snippets are what the generator saw of a prompt MIDI (`prompt.prompt_snippets`: its "A", "B", ...
sections, each cut to its first `snippet_len` tokens). A generated section *follows* its prompt when it is
more similar to the snippet of its own letter than to the snippet of every other letter. The similarity
is the mean of three parts, each in [0, 1] (1 = alike):

- pitch classes: cosine of the duration-weighted pitch-class profiles, not transposed (a snippet in D
  asks for D);
- register: exp(-(|mean pitch difference| + |pitch range difference| / 2) / 12), ranges as the 10th-90th
  percentile span, so an octave apart in mean pitch gives 0.37;
- intervals: cosine of the top voice's melodic interval histograms.

A section compared with k snippets follows by chance 1 / k of the time (50% for a two-letter prompt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cadenza.staria.events import DRUM, MusicEvents
from cadenza.staria.form_adherence import (
    PieceInput, cosine, interval_histogram, load_piece, pitch_class_profile, shared_tokenizer, split_sections,
)
from cadenza.staria.midi import MidiInput
from cadenza.staria.prompt import prompt_snippets, snippet_body

REGISTER_SEMITONES = 12.0  # the register difference at which its similarity falls to 1/e
PARTS = ("pitch_classes", "register", "intervals")


@dataclass
class MusicProfile:
    """What a section and a snippet are compared by."""

    pitch_classes: np.ndarray  # (12,) duration-weighted, summing to 1
    mean_pitch: float
    pitch_range: float  # 10th-90th percentile span, in semitones
    intervals: np.ndarray  # (25,) top-voice intervals, clipped to an octave


def music_profile(events: MusicEvents) -> MusicProfile:
    """The profile of some notes (drums ignored for pitch)."""
    pitch = events.pitch[events.instrument != DRUM].astype(np.float64)
    low, high = np.percentile(pitch, [10, 90]) if len(pitch) else (0.0, 0.0)
    return MusicProfile(pitch_class_profile(events), float(pitch.mean()) if len(pitch) else 0.0,
                        float(high - low), interval_histogram(events))


def profile_similarity(a: MusicProfile, b: MusicProfile) -> dict[str, float]:
    """Similarity per part and their mean ("combined"), each in [0, 1]."""
    distance = abs(a.mean_pitch - b.mean_pitch) + abs(a.pitch_range - b.pitch_range) / 2
    parts = {"pitch_classes": cosine(a.pitch_classes, b.pitch_classes),
             "register": math.exp(-distance / REGISTER_SEMITONES),
             "intervals": cosine(a.intervals, b.intervals)}
    return {**parts, "combined": float(np.mean([parts[p] for p in PARTS]))}


def snippet_events(prompt: MidiInput, snippet_len: int = 256) -> dict[str, MusicEvents]:
    """The notes of each snippet the generator takes from a prompt MIDI, per letter."""
    tok = shared_tokenizer()
    return {letter: tok.ids_to_events(snippet_body(tok, ids)[:snippet_len])[0]
            for letter, ids in prompt_snippets(tok, prompt).items()}


def prompt_following(piece: PieceInput, snippets: dict[str, MusicEvents]) -> dict:
    """Per section of a generated piece (split at its markers): its similarity to every snippet and whether
    it follows its own; then the number of judged sections, how many follow, and the chance level.

    Judged are the sections whose letter has a snippet, when there are at least two snippets.
    """
    profiles = {letter: music_profile(events) for letter, events in snippets.items()}
    events, _ = load_piece(piece)
    sections = []
    for k, section in enumerate(split_sections(events)):
        if section.letter not in profiles or len(profiles) < 2:
            continue
        mine = music_profile(section.events)
        similarity = {letter: profile_similarity(mine, other) for letter, other in profiles.items()}
        own = similarity[section.letter]["combined"]
        follows = all(own > s["combined"] for letter, s in similarity.items() if letter != section.letter)
        sections.append({"index": k, "letter": section.letter, "follows": follows,
                         "similarity": {letter: round(s["combined"], 4) for letter, s in similarity.items()},
                         "parts": {letter: {p: round(s[p], 4) for p in PARTS} for letter, s in similarity.items()}})
    return {"sections": sections, **following_rate([sections])}


def following_rate(pieces: list[list[dict]]) -> dict:
    """Pooled over the judged sections of several pieces: how many, the share that follows its own
    snippet, and the share chance would give (None without sections)."""
    sections = [s for piece in pieces for s in piece]
    n = len(sections)
    return {"n_sections": n,
            "following_rate": sum(s["follows"] for s in sections) / n if n else None,
            "chance": float(np.mean([1 / len(s["similarity"]) for s in sections])) if n else None}
