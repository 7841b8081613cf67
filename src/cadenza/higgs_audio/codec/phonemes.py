"""The phoneme alphabet of a v3 codec's CTC head: the letters of espeak-ng's IPA, without stress, length or
pauses, so that the head learns what is said and not how it is stressed or paced."""

from __future__ import annotations

import string
import unicodedata

from cadenza.higgs_audio.text import ESPEAK_SYMBOLS

BLANK = 0
PHONEME_SYMBOLS: tuple[str, ...] = tuple(sorted(
    c for c in set(string.ascii_lowercase) | set(ESPEAK_SYMBOLS) if unicodedata.category(c) in ("Ll", "Lo")
))
PHONEME_CLASSES = len(PHONEME_SYMBOLS) + 1  # + the CTC blank
_INDEX = {c: i + 1 for i, c in enumerate(PHONEME_SYMBOLS)}


def phoneme_ids(ipa: str) -> list[int]:
    """CTC targets (1-based; 0 is the blank) of an espeak-ng IPA transcription; other symbols are dropped."""
    return [_INDEX[c] for c in ipa if c in _INDEX]
