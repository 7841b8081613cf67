"""Text front end of Higgs Audio: transcript normalization, phonemization and the text tokenizer.

Spoken text is tokenized as characters of its espeak-ng IPA transcription, not of its spelling: a small
model trained for a few hours on CPU learns pronunciation far faster from phonemes than from English.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from os import PathLike
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from phonemizer.backend import EspeakBackend

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|pad|>", "<|unk|>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eot_id|>", "<|audio_bos|>", "<|audio_eos|>", "<|audio_out_bos|>", "<|AUDIO|>",
    "<|AUDIO_OUT|>", "<|recipient|>", "<|scene_desc_start|>", "<|scene_desc_end|>",
    "<|generation_instruction_start|>", "<|generation_instruction_end|>",
    "<SE>", "</SE>", "<SE_s>", "</SE_s>", "<SE_e>", "</SE_e>",
    *(f"[SPEAKER{i}]" for i in range(8)),
)
TOKENIZER_TYPE = "cadenza-char-phoneme"
# Tab and newline join the printable ASCII characters: ChatML headers end in "\n\n".
ASCII_CHARS: tuple[str, ...] = ("\t", "\n", *(chr(c) for c in range(32, 127)))
# What espeak-ng en-us writes (measured on 20k lines of fortunes, plus the rarer ɬ ç χ ɒ and the
# punctuation it keeps), so a tokenizer built from a small corpus still covers unseen text.
ESPEAK_SYMBOLS: tuple[str, ...] = tuple("æðŋɐɑɔəɚɛɜɡɪɹɾʃʊʌʒʔθᵻɬçχɒˈˌː\u0303\u0329¡¿«»“”—…")
PHONEMIZE_CACHE_SIZE = 50_000
# Rough relative duration of a phonemized transcript's symbols, for placing them along the audio that speaks
# them: word gaps, stress and length marks take no time of their own, pause punctuation about two phonemes,
# every other symbol (a phoneme) one.
SILENT_SYMBOLS = frozenset(" \tˈˌː\u0303\u0329")
PAUSE_SYMBOLS = frozenset(",.;:!?—…")

_TOKEN_PATTERN = re.compile("|".join(re.escape(t) for t in sorted(SPECIAL_TOKENS, key=len, reverse=True)))
# A sound event such as "<SE>[Laughter]</SE>" is kept whole: its label is a tag, not speech.
_PROTECTED_PATTERN = re.compile(r"<(?P<se>SE(?:_s|_e)?)>\[[^\[\]<>]*\]</(?P=se)>|" + _TOKEN_PATTERN.pattern)


def _split(text: str, pattern: re.Pattern[str]) -> Iterator[tuple[str, bool]]:
    """Yield (piece, matched) for the pieces of `text` between and at the matches of `pattern`."""
    position = 0
    for match in pattern.finditer(text):
        if match.start() > position:
            yield text[position:match.start()], False
        yield match.group(), True
        position = match.end()
    if position < len(text):
        yield text[position:], False


# --- Numbers ----------------------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_IRREGULAR_ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                       "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}


def number_to_words(n: int) -> str:
    """Spell an integer in English words, without "and" ("one hundred forty two", "minus three")."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (" " + _ONES[ones] if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + (" " + number_to_words(rest) if rest else "")
    scale, name = next((s, name) for s, name in _SCALES if n >= s)
    high, rest = divmod(n, scale)
    return number_to_words(high) + " " + name + (" " + number_to_words(rest) if rest else "")


def spell_number(digits: str) -> str:
    """A digit string as words, 1100-1999 read as years; the corpus builder and WER scoring spell numbers so."""
    return _integer(digits, year=True)


def _ordinal(words: str) -> str:
    head, _, last = words.rpartition(" ")
    if last in _IRREGULAR_ORDINALS:
        last = _IRREGULAR_ORDINALS[last]
    else:
        last = last[:-1] + "ieth" if last.endswith("y") else last + "th"
    return f"{head} {last}".strip()


def _plural(words: str) -> str:
    if words.endswith("y"):
        return words[:-1] + "ies"
    return words + ("es" if words.endswith("x") else "s")


def _digits(digits: str) -> str:
    return " ".join(_ONES[int(d)] for d in digits)


def _integer(digits: str, year: bool = False) -> str:
    """Spell a digit string ("1,024", "007"); with `year`, 1100-1999 read as years ("nineteen oh five")."""
    if (digits.startswith("0") and len(digits) > 1) or len(digits) > 15:  # codes, not quantities
        return _digits(digits)
    n = int(digits.replace(",", ""))
    if year and len(digits) == 4 and 1100 <= n <= 1999 and n % 100:
        high, low = divmod(n, 100)
        return number_to_words(high) + " " + (number_to_words(low) if low >= 10 else "oh " + _ONES[low])
    return number_to_words(n)


def _decimal(number: str, year: bool = False) -> str:
    """Spell "3.14" as "three point one four" (and "1.2.3" as "one point two point three")."""
    whole, *fractions = number.split(".")
    return " point ".join([_integer(whole, year and not fractions), *map(_digits, fractions)])


# --- Normalization ----------------------------------------------------------------------------------

_ZH_PUNCTUATION = {
    "，": ", ", "。": ".", "：": ":", "；": ";", "？": "?", "！": "!", "（": "(", "）": ")", "【": "[",
    "】": "]", "《": "<", "》": ">", "“": '"', "”": '"', "‘": "'", "’": "'", "、": ",", "—": "-",
    "…": "...", "·": ".", "「": '"', "」": '"', "『": '"', "』": '"',
}
_SOUND_EVENTS = {
    "[laugh]": "<SE>[Laughter]</SE>",
    "[humming start]": "<SE_s>[Humming]</SE_s>", "[humming end]": "<SE_e>[Humming]</SE_e>",
    "[music start]": "<SE_s>[Music]</SE_s>", "[music end]": "<SE_e>[Music]</SE_e>", "[music]": "<SE>[Music]</SE>",
    "[sing start]": "<SE_s>[Singing]</SE_s>", "[sing end]": "<SE_e>[Singing]</SE_e>",
    "[applause]": "<SE>[Applause]</SE>", "[cheering]": "<SE>[Cheering]</SE>", "[cough]": "<SE>[Cough]</SE>",
}
_SOUND_EVENT_PATTERN = re.compile("|".join(map(re.escape, _SOUND_EVENTS)), re.IGNORECASE)
_SYMBOLS = {"&": " and ", "@": " at ", "+": " plus ", "=": " equals ", "%": " percent "}
# Titles precede a name, so their period never ends a sentence.
_TITLES = {
    "Mr.": "Mister", "Mrs.": "Missus", "Ms.": "Miz", "Dr.": "Doctor", "Prof.": "Professor", "Mt.": "Mount",
    "Gen.": "General", "Capt.": "Captain", "Lt.": "Lieutenant", "Sgt.": "Sergeant", "Col.": "Colonel",
    "vs.": "versus", "e.g.": "for example", "i.e.": "that is", "approx.": "approximately",
}
# These often end a sentence: their period is kept when a capital letter or the end follows.
_TRAILING_ABBREVIATIONS = {
    "etc.": "et cetera", "Jr.": "Junior", "Sr.": "Senior", "Inc.": "Incorporated", "Ltd.": "Limited",
    "Ave.": "Avenue", "Rd.": "Road", "St.": "Street",
}
_SAINT_PATTERN = re.compile(r"(?<![\w.])St\.(?=\s+[A-Z])")
# Units are spelled only right after a number ("5 m", "2.5kg"); plurals add "s" to the first word.
_UNITS = {
    "km/h": "kilometer per hour", "mph": "mile per hour", "km": "kilometer", "cm": "centimeter",
    "mm": "millimeter", "m": "meter", "mi": "mile", "ft": "foot", "kg": "kilogram", "g": "gram",
    "mg": "milligram", "lb": "pound", "lbs": "pound", "oz": "ounce", "l": "liter", "L": "liter", "ml": "milliliter",
    "mL": "milliliter", "h": "hour", "hr": "hour", "min": "minute", "s": "second", "sec": "second",
    "ms": "millisecond", "Hz": "hertz", "kHz": "kilohertz", "MHz": "megahertz", "GHz": "gigahertz",
    "KB": "kilobyte", "MB": "megabyte", "GB": "gigabyte", "TB": "terabyte", "W": "watt", "kW": "kilowatt",
}
_IRREGULAR_UNIT_PLURALS = {"foot": "feet", "hertz": "hertz", "kilohertz": "kilohertz",
                           "megahertz": "megahertz", "gigahertz": "gigahertz"}
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
               "£": ("pound", "pounds", "penny", "pence")}

_NUMBER = r"\d{1,3}(?:,\d{3})+(?!\d)|\d+"
_MINUS = r"(?P<minus>(?<![\w.])-)?"  # "-5", but not the hyphen of "x-5" or "5-10"
_TITLE_PATTERN = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, _TITLES)) + ")")
_TRAILING_PATTERN = re.compile(
    r"(?<![\w.])(" + "|".join(map(re.escape, _TRAILING_ABBREVIATIONS)) + r")(?P<end>(?=\s*$|\s+[A-Z]))?"
)
_CURRENCY_PATTERN = re.compile(
    _MINUS + r"(?P<symbol>[$€£])\s?(?P<whole>" + _NUMBER + r")(?:\.(?P<cents>\d+))?"
    r"(?:\s?(?P<scale>thousand|million|billion|trillion)\b)?"
)
_PERCENT_PATTERN = re.compile(_MINUS + r"(?P<number>(?:" + _NUMBER + r")(?:\.\d+)?)\s?%")
# A final "." of "p.m." is left in place: it may also end the sentence.
_AM_PM = r"\s?(?P<ampm>[ap])\.?m\b"
_CLOCK_PATTERN = re.compile(r"\b(?P<hour>[01]?\d|2[0-3]):(?P<minute>[0-5]\d)\b(?:" + _AM_PM + ")?", re.IGNORECASE)
_HOUR_PATTERN = re.compile(r"\b(?P<hour>1[0-2]|0?\d)" + _AM_PM, re.IGNORECASE)
_ORDINAL_PATTERN = re.compile(r"\b(?P<number>" + _NUMBER + r")(?:st|nd|rd|th)\b")
_DECADE_PATTERN = re.compile(r"'?\b(?P<number>\d*0)'?s\b")
_UNIT_PATTERN = re.compile(
    _MINUS + r"(?P<number>(?:" + _NUMBER + r")(?:\.\d+)?)\s?(?P<unit>"
    + "|".join(map(re.escape, sorted(_UNITS, key=len, reverse=True))) + r")(?![\w/])"
)
_PLAIN_NUMBER_PATTERN = re.compile(_MINUS + r"(?P<number>(?:" + _NUMBER + r")(?:\.\d+)*)")
_FINAL_PUNCTUATION = (".", ",", "!", "?", ";", ":", "</SE>", "</SE_s>", "</SE_e>")


def _minus(match: re.Match[str]) -> str:
    return "minus " if match["minus"] else ""


def _spell_currency(match: re.Match[str]) -> str:
    one, many, cent, cents = _CURRENCIES[match["symbol"]]
    minus = _minus(match)
    whole, fraction, scale = match["whole"], match["cents"], match["scale"]
    if scale or (fraction and len(fraction) > 2):  # "$2.5 million": an amount, not dollars and cents
        number = _decimal(whole + ("." + fraction if fraction else ""))
        return f"{minus}{number} {scale + ' ' if scale else ''}{many}"
    units, hundredths = int(whole.replace(",", "")), int((fraction or "0").ljust(2, "0"))
    parts = [f"{_integer(whole)} {one if units == 1 else many}"] if units or not hundredths else []
    if hundredths:
        parts.append(f"{number_to_words(hundredths)} {cent if hundredths == 1 else cents}")
    return minus + " and ".join(parts)


def _spell_time(match: re.Match[str]) -> str:
    hour, minute, ampm = int(match["hour"]), match.groupdict().get("minute"), match["ampm"]
    words = number_to_words(hour)
    if minute and minute != "00":
        words += " " + (number_to_words(int(minute)) if minute[0] != "0" else "oh " + _ONES[int(minute)])
    elif not ampm:
        words += " o'clock"
    return words + (f" {ampm.lower()} m" if ampm else "")


def _spell_unit(match: re.Match[str]) -> str:
    unit, number = _UNITS[match["unit"]], match["number"]
    if number != "1":
        first, _, rest = unit.partition(" ")
        unit = " ".join([_IRREGULAR_UNIT_PLURALS.get(first, first + "s"), rest]).strip()
    return f"{_minus(match)}{_decimal(number)} {unit}"


def _spell_saint(match: re.Match[str]) -> str:
    # "in St. Louis" is a saint; "Main St. Then" is a street (a capitalized word right before it),
    # spelled later with the abbreviations that may end a sentence.
    words_before = match.string[:match.start()].split()
    street = words_before and words_before[-1][0].isupper() and words_before[-1][-1].isalnum()
    return match.group() if street else "Saint"


def _spell_abbreviations(text: str) -> str:
    text = _TITLE_PATTERN.sub(lambda m: _TITLES[m[1]], text)
    text = re.sub(r"(?<![\w.])No\.(?=\s*\d)", "number", text)  # not the answer "No."
    text = _SAINT_PATTERN.sub(_spell_saint, text)
    return _TRAILING_PATTERN.sub(lambda m: _TRAILING_ABBREVIATIONS[m[1]] + ("." if m["end"] is not None else ""), text)


def _spell_numbers(text: str) -> str:
    text = re.sub(r"(?<=\d)-(?=\d)", " to ", text)  # ranges: "pages 5-10", "1990-1995"
    text = _CURRENCY_PATTERN.sub(_spell_currency, text)
    text = _PERCENT_PATTERN.sub(lambda m: f"{_minus(m)}{_decimal(m['number'])} percent", text)
    text = _CLOCK_PATTERN.sub(_spell_time, text)
    text = _HOUR_PATTERN.sub(_spell_time, text)
    text = _ORDINAL_PATTERN.sub(lambda m: _ordinal(_integer(m["number"])), text)
    text = _DECADE_PATTERN.sub(lambda m: _plural(_integer(m["number"], year=True)), text)
    text = _UNIT_PATTERN.sub(_spell_unit, text)
    text = re.sub(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])", " ", text)  # "mp3", "3D"
    return _PLAIN_NUMBER_PATTERN.sub(lambda m: _minus(m) + _decimal(m["number"], year=True), text)


def _normalize_plain(text: str) -> str:
    """Normalize text that holds no special token."""
    for zh, ascii_punctuation in _ZH_PUNCTUATION.items():
        text = text.replace(zh, ascii_punctuation)
    text = text.replace("(", " ").replace(")", " ")
    text = text.replace("°F", " degrees Fahrenheit").replace("°C", " degrees Celsius").replace("°", " degrees")
    text = _SOUND_EVENT_PATTERN.sub(lambda m: _SOUND_EVENTS[m.group().lower()], text)
    text = re.sub(r"#(?=\d)", "number ", text)
    text = _spell_abbreviations(text)
    text = _spell_numbers(text)
    for symbol, words in _SYMBOLS.items():
        text = text.replace(symbol, words)
    return text


def normalize_transcript(text: str) -> str:
    """Normalize a transcript to speak: Higgs Audio's rules plus numbers, currency, units and abbreviations."""
    pieces = _split(text, _PROTECTED_PATTERN)
    text = "".join(piece if protected else _normalize_plain(piece) for piece, protected in pieces)
    text = " ".join(text.split())
    text = re.sub(r" (?=[.,!?;:](?:\s|$))", "", text)  # "( aside ) ." leftovers
    if text and not text.rstrip("\"'").endswith(_FINAL_PUNCTUATION):
        text += "."
    return text


# --- Phonemization ----------------------------------------------------------------------------------

_espeak: EspeakBackend | None = None
_phoneme_cache: OrderedDict[str, str] = OrderedDict()


def _backend() -> EspeakBackend:
    """The espeak-ng backend, created on first use (it takes a noticeable moment to construct)."""
    global _espeak
    if _espeak is None:
        from phonemizer.backend import EspeakBackend

        if not EspeakBackend.is_available():
            raise RuntimeError("phonemize needs the espeak-ng library, which was not found: "
                               "install it (Debian/Ubuntu: apt-get install espeak-ng)")
        quiet = logging.getLogger("cadenza.phonemizer")
        quiet.setLevel(logging.ERROR)  # language-switch notices on foreign words are noise here
        _espeak = EspeakBackend("en-us", preserve_punctuation=True, with_stress=True,
                                language_switch="remove-flags", logger=quiet)
    return _espeak


def _remember(text: str, phonemes: str) -> None:
    _phoneme_cache[text] = phonemes
    _phoneme_cache.move_to_end(text)
    if len(_phoneme_cache) > PHONEMIZE_CACHE_SIZE:
        _phoneme_cache.popitem(last=False)


def phonemize_batch(texts: list[str]) -> list[str]:
    """Phonemize many normalized texts with one espeak call, caching each result for `phonemize`."""
    unique = dict.fromkeys(texts)
    results = {t: _phoneme_cache[t] for t in unique if t in _phoneme_cache}
    missing = [t for t in unique if t not in results]
    pieces = {t: list(_split(t, _PROTECTED_PATTERN)) for t in missing}
    plain = list(dict.fromkeys(
        " ".join(piece.split()) for ps in pieces.values() for piece, protected in ps if not protected and piece.strip()
    ))
    ipa = dict(zip(plain, _backend().phonemize(plain, strip=True, njobs=1))) if plain else {}
    if len(ipa) != len(plain):
        raise RuntimeError(f"espeak-ng returned {len(ipa)} transcriptions for {len(plain)} texts")
    for text in missing:
        results[text] = _join_pieces(pieces[text], ipa)
    for text, phonemes in results.items():
        _remember(text, phonemes)
    return [results[t] for t in texts]


def _join_pieces(pieces: list[tuple[str, bool]], ipa: dict[str, str]) -> str:
    parts = []
    for piece, protected in pieces:
        if protected:
            parts.append(piece)
            continue
        # Whitespace next to a special token survives: "[SPEAKER0] hello" must not become "[SPEAKER0]həlˈoʊ".
        lead = " " if piece[:1].isspace() else ""
        trail = " " if piece[-1:].isspace() else ""
        parts.append(lead + ipa.get(" ".join(piece.split()), "") + trail)
    return re.sub(" {2,}", " ", "".join(parts)).strip()


def phonemize(text: str) -> str:
    """IPA (espeak-ng en-us, with stress and punctuation) of normalized text; special tokens and
    sound events such as "<SE>[Laughter]</SE>" pass through whole, their label left unphonemized."""
    return phonemize_batch([text])[0]


# --- Tokenizer --------------------------------------------------------------------------------------


class TextTokenizer:
    """Character tokenizer over special tokens, ASCII and the IPA symbols of a phonemized corpus."""

    def __init__(self, vocab: list[str]) -> None:
        if tuple(vocab[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError("vocabulary must start with SPECIAL_TOKENS, in order")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocabulary has duplicate entries")
        multi = [t for t in vocab[len(SPECIAL_TOKENS):] if len(t) != 1]
        if multi:
            raise ValueError(f"vocabulary entries after the special tokens must be single characters: {multi[:5]}")
        self._vocab = tuple(vocab)
        self._ids = {token: i for i, token in enumerate(vocab)}
        self._unk_id = self._ids["<|unk|>"]

    @classmethod
    def build(cls, texts: Iterable[str]) -> TextTokenizer:
        """Collect a vocabulary from raw transcripts (normalized and phonemized) plus ESPEAK_SYMBOLS."""
        phonemized = phonemize_batch([normalize_transcript(t) for t in texts])
        seen = {ch for t in phonemized for piece, special in _split(t, _TOKEN_PATTERN) if not special for ch in piece}
        extra = sorted((seen | set(ESPEAK_SYMBOLS)) - set(ASCII_CHARS))
        return cls([*SPECIAL_TOKENS, *ASCII_CHARS, *extra])

    @property
    def vocab(self) -> tuple[str, ...]:
        """All tokens, indexed by id."""
        return self._vocab

    @property
    def vocab_size(self) -> int:
        """Number of tokens."""
        return len(self._vocab)

    @property
    def pad_id(self) -> int:
        """Id of <|pad|> (0)."""
        return self._ids["<|pad|>"]

    def token_id(self, token: str) -> int:
        """Id of one token (a special token or a character)."""
        try:
            return self._ids[token]
        except KeyError:
            raise KeyError(f"{token!r} is not in the text tokenizer's vocabulary ({self.vocab_size} tokens)") from None

    def encode(self, text: str, spoken: bool = False) -> list[int]:
        """Token ids of `text`; special tokens written literally are single ids. With `spoken`, the text
        is a transcript to speak: it is normalized and phonemized first."""
        if spoken:
            text = phonemize(normalize_transcript(text))
        ids: list[int] = []
        for piece, special in _split(text, _TOKEN_PATTERN):
            if special:
                ids.append(self._ids[piece])
            else:
                ids.extend(self._ids.get(ch, self._unk_id) for ch in piece)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids (phonemes stay phonemes)."""
        tokens = []
        for i in map(int, ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
            tokens.append(self._vocab[i])
        return "".join(tokens)

    def durations(self, ids: Iterable[int]) -> list[float]:
        """Rough relative duration of each token of a spoken transcript (SILENT_SYMBOLS 0, PAUSE_SYMBOLS 2,
        special tokens 0, other symbols 1)."""
        def duration(token: str) -> float:
            if len(token) != 1 or token in SILENT_SYMBOLS:
                return 0.0
            return 2.0 if token in PAUSE_SYMBOLS else 1.0
        return [duration(self._vocab[int(i)]) for i in ids]

    def save(self, path: str | PathLike) -> None:
        """Write the vocabulary as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"type": TOKENIZER_TYPE, "vocab": list(self._vocab)}, f, ensure_ascii=False, indent=1)

    @classmethod
    def load(cls, path: str | PathLike) -> TextTokenizer:
        """Read a tokenizer written by `save`."""
        not_ours = f"{path}: not a text tokenizer file (expected JSON {{'type': '{TOKENIZER_TYPE}', 'vocab': [...]}})"
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{not_ours}: {e}") from e
        if not (isinstance(data, dict) and data.get("type") == TOKENIZER_TYPE and isinstance(data.get("vocab"), list)
                and all(isinstance(t, str) for t in data["vocab"])):
            raise ValueError(not_ours)
        try:
            return cls(data["vocab"])
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


def sounding(tokenizer: TextTokenizer, ids: list[int]) -> list[int]:
    """Indices of the tokens of a spoken transcript that take time (the aligner's CTC targets, the tokens a
    transcript pointer walks over)."""
    return [i for i, d in enumerate(tokenizer.durations(ids)) if d > 0]
