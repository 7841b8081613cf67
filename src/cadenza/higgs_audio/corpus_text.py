"""Sentences for the speech corpus: read offline English text, normalize, filter, dedupe.

Sources are the Debian fortune files (`fortunes`, `fortunes-min`) and the Zen of Python. A kept
sentence is plain ASCII, 3-30 words, starts with a capital letter, ends in . ! or ?, and has its
numbers spelled out; anything a speech engine would read unpredictably (symbols, acronyms, times,
decimals) is dropped rather than guessed at.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

from cadenza.higgs_audio.text import spell_number

FORTUNE_DIR = Path("/usr/share/games/fortunes")
# ASCII drawings, and the one file of non-English text.
SKIPPED_FORTUNE_FILES = {"ascii-art", "art", "translate-me"}

MIN_WORDS = 3
MAX_WORDS = 30

# Abbreviations whose period does not end a sentence.
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "prof", "mt", "no", "gen", "col", "capt", "rev"}
_ATTRIBUTION = re.compile(r"^\s*(--|-\s|~)")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')]))\s+(?=[\"'`(]*[A-Z])")
_ALLOWED = re.compile(r"^[A-Za-z0-9 .,!?;'-]+$")
_INNER_STOP = re.compile(r"(\w+)[.!?](?=.)")
_NUMBER = re.compile(r"(?<![\w.,:'-])\d{1,6}(?![\w:]|[.,]\d)")


def normalize_sentence(text: str) -> str | None:
    """Return `text` as a clean speakable sentence, or None if it should not be used."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = text.replace("`", "'").replace('"', " ")
    text = re.sub(r"\([^()]*\)|\[[^\[\]]*\]", " ", text)  # parenthetical asides, list markers "(1)"
    text = re.sub(r"\s*--+\s*", ", ", text)  # dashes read as a pause
    text = re.sub(r"(?<![A-Za-z])'|'(?![A-Za-z])", " ", text)  # quote marks, keep apostrophes
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([.,!?;:])", r"\1", text)
    text = re.sub(r"^[,;: ]+", "", text)
    text = re.sub(r"([.,!?;:])[.,;:]+", r"\1", text)  # ",." left behind by removals
    if not text or not _ALLOWED.match(text):
        return None
    if not text[0].isupper() or text[-1] not in ".!?" or text.endswith(".."):
        return None
    for match in _INNER_STOP.finditer(text):  # a stop inside: a missed split, or "her.lock"
        if match.group(1).lower() not in _ABBREVIATIONS or text[match.end()] != " ":
            return None
    if re.search(r"[A-Z]{2,}", text):  # acronyms and shouting are read letter by letter or oddly
        return None
    text = _NUMBER.sub(lambda m: spell_number(m.group()), text)
    if re.search(r"\d", text):  # times, decimals, ordinals, codes
        return None
    words = text.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    if sum(len(w) == 1 and w not in {"a", "A", "I"} for w in words) > 1:
        return None
    return text


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph into sentences, not breaking after common abbreviations (Mr., Dr., ...)."""
    pieces = _SENTENCE_END.split(paragraph.strip())
    sentences: list[str] = []
    for piece in pieces:
        last_word = sentences[-1].rsplit(" ", 1)[-1].rstrip(".").lower() if sentences else ""
        if sentences and (last_word in _ABBREVIATIONS or len(last_word) == 1):
            sentences[-1] += " " + piece
        else:
            sentences.append(piece)
    return sentences


def fortune_paragraphs(path: Path) -> Iterator[str]:
    """Yield the text of each fortune in a fortune file, attribution lines removed."""
    raw = path.read_bytes().decode("utf-8", errors="replace")
    for entry in raw.split("\n%\n"):
        lines = [line for line in entry.splitlines() if line.strip() != "%" and not _ATTRIBUTION.match(line)]
        text = " ".join(line.strip() for line in lines)
        if text:
            yield text


def zen_of_python() -> list[str]:
    """The Zen of Python, as lines of text (read without printing it)."""
    with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen
        import this

    return codecs.decode(this.s, "rot13").splitlines()[2:]


def collect_sentences(
    paragraphs: Iterable[str] | None = None, fortune_dir: Path = FORTUNE_DIR
) -> list[str]:
    """Normalized, deduplicated sentences, sorted; by default from fortunes and the Zen of Python."""
    if paragraphs is None:
        paragraphs = list(_default_paragraphs(fortune_dir))
    seen: set[str] = set()
    sentences: list[str] = []
    for paragraph in paragraphs:
        for raw in split_sentences(re.sub(r"\s+", " ", paragraph)):
            sentence = normalize_sentence(raw)
            if sentence is None:
                continue
            key = re.sub(r"[^a-z ]", "", sentence.lower())
            if key not in seen:
                seen.add(key)
                sentences.append(sentence)
    return sorted(sentences)


def _default_paragraphs(fortune_dir: Path) -> Iterator[str]:
    files = sorted(p for p in fortune_dir.glob("*") if p.is_file() and not p.suffix and p.name not in SKIPPED_FORTUNE_FILES)
    if not files:
        raise FileNotFoundError(
            f"no fortune files in {fortune_dir}: install the Debian packages 'fortunes' and 'fortunes-min'"
        )
    for path in files:
        yield from fortune_paragraphs(path)
    yield from zen_of_python()
