"""Musical forms: the label map and turning per-token section labels into a form string like "ABA"."""

from __future__ import annotations

import math
from typing import Sequence

# The 9 forms of the Staria paper first (their ids are fixed), then the 8 of the older classifier.
FORM_LABEL_MAP: dict[str, int] = {
    form: i
    for i, form in enumerate(
        ["A", "AB", "ABC", "ABA", "ABAB", "ABAC", "ABCA", "ABCB", "ABCD",
         "AAA", "AABB", "AABBAA", "ABACA", "ABBA", "ABABCB", "ABACABA"]
    )
}
LABEL_TO_FORM: dict[int, str] = {i: form for form, i in FORM_LABEL_MAP.items()}
LETTERS = "ABCD"


def condense(letters: Sequence[str]) -> str:
    """Collapse runs of the same letter: "AAABBA" -> "ABA"."""
    out: list[str] = []
    for letter in letters:
        if not out or out[-1] != letter:
            out.append(letter)
    return "".join(out)


def relabel_by_first_appearance(letters: Sequence[str]) -> list[str]:
    """Rename letters in order of first appearance: "BCB" -> "ABA"."""
    names: dict[str, str] = {}
    for letter in letters:
        names.setdefault(letter, LETTERS[len(names)] if len(names) < len(LETTERS) else "?")
    return [names[letter] for letter in letters]


def form_from_labels(labels: Sequence[int | str], min_fraction: float = 0.05) -> str:
    """The form spelled by per-token section labels (ints 0..3 or letters; negatives are ignored).

    Runs shorter than ceil(min_fraction * N) tokens are dropped as noise, letters are renamed by first
    appearance, then repeats are condensed: [0]*50 + [1]*40 + [0]*60 -> "ABA".
    """
    letters = [x if isinstance(x, str) else LETTERS[int(x)] for x in labels
               if isinstance(x, str) or int(x) >= 0]
    if not letters:
        return ""
    min_run = math.ceil(min_fraction * len(letters))
    runs: list[tuple[str, int]] = []
    for letter in letters:
        if runs and runs[-1][0] == letter:
            runs[-1] = (letter, runs[-1][1] + 1)
        else:
            runs.append((letter, 1))
    kept = [letter for letter, length in runs if length >= min_run] or [max(runs, key=lambda r: r[1])[0]]
    return condense(relabel_by_first_appearance(condense(kept)))


def form_letters(form: str) -> list[str]:
    """Distinct letters of a form in order: "ABAC" -> ["A", "B", "C"]."""
    return sorted(set(form))


def validate_form(form: str) -> str:
    """Return `form` if it is in FORM_LABEL_MAP, else raise ValueError listing the known forms."""
    if form not in FORM_LABEL_MAP:
        raise ValueError(f"unknown form {form!r}; known forms: {', '.join(FORM_LABEL_MAP)}")
    return form
