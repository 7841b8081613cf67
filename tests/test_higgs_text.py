"""Higgs Audio text front end: normalization, phonemization and the character-of-phonemes tokenizer."""

from __future__ import annotations

import json

import pytest

from cadenza.higgs_audio import text
from cadenza.higgs_audio.text import SPECIAL_TOKENS, TextTokenizer, normalize_transcript, phonemize, phonemize_batch

BUILD_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "How vexingly quick daft zebras jump!",
    "I bought 3 apples for $2.50 yesterday.",
    "Is this the real life, or is this just fantasy?",
]
UNSEEN_SENTENCES = [
    "Good morning, how are you today?",
    "The weather in Paris is lovely in spring.",
    "Please call me back after 5 pm.",
    "My flight leaves at 10:45 from gate 12.",
    "Dr. Watson lives on Baker Street.",
    "We walked 7.5 km along the river.",
    "Prices rose by 12% in 2023.",
    "Thank you very much for your patience!",
    "Could you pass the salt, please?",
    "The 21st century began in 2001.",
    "Mrs. Robinson ordered a cappuccino.",
    "Is it really worth $1,200?",
    "Birds sing loudly at dawn; owls hoot at night.",
    "Hello there [laugh] that was funny.",
    "[SPEAKER0] Where are you going? [SPEAKER1] Home.",
    "Jazz and rhythm make the thoughtful youth dance.",
    "She measured 250 ml of water.",
    "Temperatures dropped to -3 degrees overnight.",
    "Zebras, yaks and jaguars were seen at the zoo.",
    "Although tired, the engineers kept improving the machine.",
]


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.build(BUILD_SENTENCES)


def test_special_tokens_come_first_and_pad_is_zero(tokenizer):
    assert tokenizer.vocab[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    assert tokenizer.pad_id == 0 == tokenizer.token_id("<|pad|>")
    assert SPECIAL_TOKENS[-1] == "[SPEAKER7]"
    for token in SPECIAL_TOKENS:
        assert tokenizer.encode(token) == [tokenizer.token_id(token)]


def test_build_is_deterministic_and_covers_ascii_and_ipa(tokenizer):
    assert TextTokenizer.build(reversed(BUILD_SENTENCES)).vocab == tokenizer.vocab
    assert {"a", "Z", " ", "\n", "ə", "ˈ", "ɹ"} <= set(tokenizer.vocab)


def test_plain_encode_decode_round_trip(tokenizer):
    s = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nGenerate audio. [SPEAKER3] <SE>[Music]</SE>!"
    ids = tokenizer.encode(s)
    assert tokenizer.decode(ids) == s
    assert ids[:2] == [tokenizer.token_id("<|begin_of_text|>"), tokenizer.token_id("<|start_header_id|>")]
    assert ids.count(tokenizer.token_id("[SPEAKER3]")) == 1


def test_unknown_characters_and_ids(tokenizer):
    unk = tokenizer.token_id("<|unk|>")
    assert tokenizer.encode("a€b") == [tokenizer.token_id("a"), unk, tokenizer.token_id("b")]
    with pytest.raises(KeyError, match="not in the text tokenizer"):
        tokenizer.token_id("<|nope|>")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([tokenizer.vocab_size])


def test_save_load_round_trip(tokenizer, tmp_path):
    path = tmp_path / "text_tokenizer.json"
    tokenizer.save(path)
    loaded = TextTokenizer.load(path)
    assert loaded.vocab == tokenizer.vocab
    assert loaded.encode("Hi [SPEAKER1]", spoken=True) == tokenizer.encode("Hi [SPEAKER1]", spoken=True)


@pytest.mark.parametrize("content", ['{"vocab": ["a"]}', '{"type": "cadenza-char-phoneme", "vocab": 3}',
                                     "[1, 2]", "not json at all"])
def test_load_rejects_other_files(tmp_path, content):
    path = tmp_path / "other.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="other.json"):
        TextTokenizer.load(path)


def test_load_rejects_vocab_without_special_tokens(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"type": "cadenza-char-phoneme", "vocab": ["a", "b"]}))
    with pytest.raises(ValueError, match="bad.json.*SPECIAL_TOKENS"):
        TextTokenizer.load(path)


@pytest.mark.parametrize("raw, expected", [
    ("I have 42 apples", "I have forty two apples."),
    ("It was -5 degrees and 3.14 wide", "It was minus five degrees and three point one four wide."),
    ("1,000,000 people in 1984", "one million people in nineteen eighty four."),
    ("She came 1st, he 2nd, they 3rd, we 21st", "She came first, he second, they third, we twenty first."),
    ("Half is 50% and 2.5%", "Half is fifty percent and two point five percent."),
    ("It costs $5 or $3.50 or $1", "It costs five dollars or three dollars and fifty cents or one dollar."),
    ("Only $0.99, or $2.5 million", "Only ninety nine cents, or two point five million dollars."),
    ("Run 5 km, lift 1 kg, 10 cm, 3 mm, 2 m", "Run five kilometers, lift one kilogram, ten centimeters, three "
                                              "millimeters, two meters."),
    ("Dr. Smith, Mr. Jones, Mrs. Brown, Ms. Green, St. Mary", "Doctor Smith, Mister Jones, Missus Brown, "
                                                              "Miz Green, Saint Mary."),
    ("Pens, paper, etc.", "Pens, paper, et cetera."),
    ("At 10:30 pm in the 1990s", "At ten thirty p m in the nineteen nineties."),
    ("72°F or 22°C", "seventy two degrees Fahrenheit or twenty two degrees Celsius."),
    ("Hello （world）。", "Hello world."),
    ("Hi (aside) there", "Hi aside there."),
    ("  lots   of \n\n space  ", "lots of space."),
    ("Really?", "Really?"),
    ('He said "hi"', 'He said "hi".'),
    ("[SPEAKER0] Hello 2 you [SPEAKER1] ok", "[SPEAKER0] Hello two you [SPEAKER1] ok."),
    ("Ha [laugh]", "Ha <SE>[Laughter]</SE>"),
    ("[humming start] hm [humming end]", "<SE_s>[Humming]</SE_s> hm <SE_e>[Humming]</SE_e>"),
    ("[music start] [music end] [music]", "<SE_s>[Music]</SE_s> <SE_e>[Music]</SE_e> <SE>[Music]</SE>"),
    ("[sing start] la [sing end]", "<SE_s>[Singing]</SE_s> la <SE_e>[Singing]</SE_e>"),
    ("[applause] [cheering] [cough]", "<SE>[Applause]</SE> <SE>[Cheering]</SE> <SE>[Cough]</SE>"),
    ("", ""),
])
def test_normalize_transcript(raw, expected):
    assert normalize_transcript(raw) == expected
    assert normalize_transcript(expected) == expected  # normalizing twice changes nothing


def test_phonemize_keeps_punctuation_and_special_tokens():
    ipa = phonemize("[SPEAKER0] Hello, world! <SE>[Laughter]</SE> Really? [SPEAKER1] Yes; fine.")
    assert ipa.startswith("[SPEAKER0] ")
    assert " [SPEAKER1] " in ipa and " <SE>[Laughter]</SE> " in ipa
    for mark in ",!?;.":
        assert mark in ipa
    assert "Hello" not in ipa and "ə" in ipa


def test_phonemize_batch_fills_the_cache(monkeypatch):
    texts = ["Batch one.", "Batch two.", "Batch one."]
    batch = phonemize_batch(texts)
    assert batch[0] == batch[2] != batch[1]

    def no_espeak():
        raise AssertionError("espeak called for a cached text")

    monkeypatch.setattr(text, "_backend", no_espeak)
    assert [phonemize(t) for t in texts] == batch


def test_missing_espeak_is_a_clear_error(monkeypatch):
    from phonemizer.backend import EspeakBackend

    monkeypatch.setattr(text, "_espeak", None)
    monkeypatch.setattr(EspeakBackend, "is_available", classmethod(lambda cls: False))
    with pytest.raises(RuntimeError, match="espeak-ng"):
        phonemize("A sentence nobody phonemized before, surely.")


def test_spoken_encoding_is_phonemes_without_unknowns(tokenizer):
    unk = tokenizer.token_id("<|unk|>")
    for sentence in UNSEEN_SENTENCES:
        spoken = tokenizer.encode(sentence, spoken=True)
        assert spoken != tokenizer.encode(sentence)
        assert unk not in spoken, (sentence, tokenizer.decode(spoken))
    ids = tokenizer.encode("[SPEAKER0] Where? [SPEAKER1] Home.", spoken=True)
    assert ids[0] == tokenizer.token_id("[SPEAKER0]") and tokenizer.token_id("[SPEAKER1]") in ids


def test_durations_of_spoken_tokens(tokenizer):
    ids = tokenizer.encode("[SPEAKER0] Go home, now.", spoken=True)
    tokens = [tokenizer.vocab[i] for i in ids]
    durations = dict(zip(tokens, tokenizer.durations(ids)))
    assert durations["[SPEAKER0]"] == 0 and durations[" "] == 0 and durations["ˈ"] == 0
    assert durations[","] == durations["."] == 2 and durations["h"] == durations["m"] == 1
