"""Staria's prompt format, the one encoder input that training (`datamodule.GenerativeDataset`) and generation
(`generate.StariaGenerator`) both build:

    <PROMPT_START> [<FORM>] then per letter: <X_SECTION> + the first `snippet_len` tokens of its snippet,
    then <PROMPT_END>

A snippet is the body of a section: its notes and <T> tokens, without the instrument prefix, <S>, section
tokens or <E>. Training cuts one from the first section of each letter of the piece it learns; generation
from the marked sections of a prompt MIDI (or a whole piece). Classifier-free guidance's unconditional
branch, and training's prompt dropout, keep only the first `UNCONDITIONAL_LEN` tokens: <PROMPT_START> <FORM>.
"""

from __future__ import annotations

import numpy as np

from cadenza.staria.forms import LETTERS
from cadenza.staria.midi import MidiInput
from cadenza.staria.tokenizer import K_SECTION, StariaTokenizer

UNCONDITIONAL_LEN = 2


def section_spans(tokenizer: StariaTokenizer, ids: np.ndarray) -> list[tuple[str, int, int]]:
    """(letter, start, end) of each section: start is the index of its section token, end exclusive.

    The last section ends before `<E>` (or at the end of the sequence).
    """
    ids = np.asarray(ids, dtype=np.int64)
    positions = np.flatnonzero(np.isin(ids, tokenizer.section_ids))
    eos = np.flatnonzero(ids == tokenizer.eos_id)
    stop = int(eos[0]) if len(eos) else len(ids)
    ends = [*positions[1:].tolist(), stop]
    letters = np.searchsorted(tokenizer.section_ids, ids[positions])
    return [(LETTERS[letter], int(s), max(int(e), int(s) + 1))
            for letter, s, e in zip(letters, positions, ends)]


def section_snippets(tokenizer: StariaTokenizer, ids: np.ndarray) -> dict[str, np.ndarray]:
    """The body of the first section of each letter, letters in order of first appearance ({} without
    section tokens)."""
    ids = np.asarray(ids, dtype=np.int64)
    snippets: dict[str, np.ndarray] = {}
    for letter, start, end in section_spans(tokenizer, ids):
        snippets.setdefault(letter, ids[start + 1:end])
    return snippets


def prompt_snippets(tokenizer: StariaTokenizer, prompt: MidiInput) -> dict[str, np.ndarray]:
    """Snippets of a prompt MIDI: its marked sections ("A", "B", ... markers), else the whole piece as "A"."""
    ids = tokenizer.tokenize_ids(prompt).astype(np.int64)
    return section_snippets(tokenizer, ids) or {"A": ids}


def snippet_body(tokenizer: StariaTokenizer, ids: np.ndarray) -> np.ndarray:
    """The notes and <T> tokens of a snippet: what follows <S> (if any), without section tokens and <E>."""
    body = np.asarray(ids, dtype=np.int64)
    body = body[tokenizer.kinds(body) != K_SECTION]
    starts = np.flatnonzero(body == tokenizer.bos_id)
    body = body[int(starts[0]) + 1 if len(starts) else 0:]
    return body[body != tokenizer.eos_id]


def encoder_prompt(tokenizer: StariaTokenizer, snippets: dict[str, np.ndarray], snippet_len: int = 256,
                   form: str | None = None) -> np.ndarray:
    """The prompt of `snippets` (token ids per letter, in the order given), with the form token if `form`."""
    parts = [tokenizer.prompt_start_id]
    if form is not None:
        parts.append(tokenizer.form_ids[form])
    for letter, ids in snippets.items():
        parts += [tokenizer.section_token_id(letter), *snippet_body(tokenizer, ids)[:snippet_len].tolist()]
    return np.asarray(parts + [tokenizer.prompt_end_id], dtype=np.int64)


def snippet_prompt(tokenizer: StariaTokenizer, ids: np.ndarray, snippet_len: int = 256,
                   form: str | None = None, min_len: int | None = None,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """The training prompt of a piece: its own sections' snippets (a piece without section tokens gives
    the empty prompt <PROMPT_START> [<FORM>] <PROMPT_END>). With `min_len`, each letter's snippet is cut to
    a random length in [min_len, snippet_len] drawn from `rng`."""
    snippets = section_snippets(tokenizer, ids)
    if min_len is not None:
        snippets = {letter: body[:rng.integers(min_len, snippet_len + 1)] for letter, body in snippets.items()}
    return encoder_prompt(tokenizer, snippets, snippet_len, form)


def unconditional_prompt(tokenizer: StariaTokenizer, form: str) -> np.ndarray:
    """What guidance's unconditional branch sees of any prompt for `form`: <PROMPT_START> <FORM>."""
    return encoder_prompt(tokenizer, {}, form=form)[:UNCONDITIONAL_LEN]
