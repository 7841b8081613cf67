"""Staria pictures: a piece's piano roll with its sections shaded (drawing lives in core.plots)."""

from __future__ import annotations

from pathlib import Path

from cadenza.core.plots import piano_roll_png
from cadenza.staria.form_adherence import PieceInput, load_piece, split_sections
from cadenza.staria.events import INSTRUMENTS


def piano_roll(x: PieceInput, out_png: str | Path, title: str | None = None) -> Path:
    """PNG piano roll of a MIDI path/bytes, Score, token ids or MusicEvents, one colour per instrument,
    its sections (from markers / section tokens) shaded and lettered."""
    events, _ = load_piece(x)
    sections = [(s.start_ms, s.end_ms, s.letter) for s in split_sections(events)] \
        if (events.section >= 0).any() else []
    return piano_roll_png(events.onset_ms, events.duration_ms, events.pitch, events.instrument, out_png,
                          sections=sections, title=title, track_names=dict(enumerate(INSTRUMENTS)))
