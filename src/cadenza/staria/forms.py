"""Musical forms: the label map and turning per-token section labels into a form string like "ABA"."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

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
# Cost (in nats) of one section change when decoding per-token letter probabilities into sections.
SWITCH_COST = 8.0


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


def decode_sections(probs: np.ndarray, switch_cost: float = SWITCH_COST) -> np.ndarray:
    """The most likely per-token letters (n,) given per-token probabilities (n, 4), as whole sections.

    Token-wise argmax flickers between letters where the classifier hesitates; a piece is a few long
    sections. This Viterbi pass finds the labelling that maximises sum(log p) minus `switch_cost` per
    section change, under the rule that letters are named by first appearance (A first, a new letter is
    always the next unused one). States are (current letter, highest letter so far)."""
    n, k = probs.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    logp = np.log(np.clip(probs, 1e-9, 1.0))
    states = [(c, m) for m in range(k) for c in range(m + 1)]
    index = {s: i for i, s in enumerate(states)}
    # cost[i, j]: moving from state i to state j (-inf: not allowed).
    move = np.full((len(states), len(states)), -np.inf)
    for (c, m), i in index.items():
        move[i, i] = 0.0
        for c2 in range(m + 1):
            if c2 != c:
                move[i, index[(c2, m)]] = -switch_cost
        if m + 1 < k:
            move[i, index[(m + 1, m + 1)]] = -switch_cost
    letter = np.array([c for c, _ in states])
    score = np.where(np.arange(len(states)) == index[(0, 0)], logp[0, 0], -np.inf)
    back = np.zeros((n, len(states)), dtype=np.int64)
    for t in range(1, n):
        total = score[:, None] + move
        back[t] = total.argmax(axis=0)
        score = total.max(axis=0) + logp[t, letter]
    path = np.empty(n, dtype=np.int64)
    state = int(score.argmax())
    for t in range(n - 1, -1, -1):
        path[t] = letter[state]
        state = back[t, state]
    return path


def form_letters(form: str) -> list[str]:
    """Distinct letters of a form in order: "ABAC" -> ["A", "B", "C"]."""
    return sorted(set(form))


def validate_form(form: str) -> str:
    """Return `form` if it is in FORM_LABEL_MAP, else raise ValueError listing the known forms."""
    if form not in FORM_LABEL_MAP:
        raise ValueError(f"unknown form {form!r}; known forms: {', '.join(FORM_LABEL_MAP)}")
    return form
