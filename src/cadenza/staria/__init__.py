"""Staria: structure-aware symbolic music generation (MIDI in, MIDI out)."""

from cadenza.staria.forms import FORM_LABEL_MAP, form_from_labels
from cadenza.staria.midi import MidiError
from cadenza.staria.tokenizer import StariaTokenizer

__all__ = ["FORM_LABEL_MAP", "MidiError", "StariaTokenizer", "form_from_labels"]
