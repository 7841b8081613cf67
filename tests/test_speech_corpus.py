"""Speech corpus builder: sentence rules, voice identities, splits, and a tiny real build."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

sf = pytest.importorskip("soundfile")
pytest.importorskip("soxr")

from cadenza.higgs_audio import corpus, corpus_voices  # noqa: E402
from cadenza.higgs_audio.corpus_text import (  # noqa: E402
    collect_sentences,
    fortune_paragraphs,
    normalize_sentence,
)
from cadenza.higgs_audio.text import number_to_words  # noqa: E402
from cadenza.higgs_audio.corpus_voices import JOE, VoiceIdentity, default_voices, engine_available  # noqa: E402

SENTENCES = [
    "The cat sat on the mat.",
    "Time flies like an arrow.",
    "A stitch in time saves nine.",
    "Fortune favors the bold.",
    "Every cloud has a silver lining.",
    "Patience is a virtue.",
    "Better late than never.",
    "Actions speak louder than words.",
    "Knowledge is power.",
    "Still waters run deep.",
    "Look before you leap.",
    "Practice makes perfect.",
]
MANIFEST_FIELDS = {"id", "audio", "text", "speaker", "engine", "duration", "sample_rate", "split"}


def test_number_spelling() -> None:
    assert number_to_words(0) == "zero"
    assert number_to_words(42) == "forty two"
    assert number_to_words(1300) == "one thousand three hundred"
    assert number_to_words(205_017) == "two hundred five thousand seventeen"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  It  was\tfine,  really. ", "It was fine, really."),
        ('"Hello," she said -- quietly.', "Hello, she said, quietly."),
        ("In 1984 he owned 25 cats.", "In nineteen eighty four he owned twenty five cats."),
        ("Caf\u00e9 society is dull.", "Cafe society is dull."),
        ("It's (mostly) quite harmless.", "It's quite harmless."),
        ("Go.", None),  # too short
        ("This sentence " + "goes on and " * 15 + "on.", None),  # too long
        ("Meet me at 10:30 tonight.", None),  # times are not spelled out
        ("It costs $5 or 3.5 euros.", None),  # symbols and decimals
        ("Email me at bob@example.com today.", None),
        ("The UNIX way is the best way.", None),  # acronyms
        ("lowercase start is a fragment.", None),
        ("No final punctuation here", None),
    ],
)
def test_normalize_sentence(raw: str, expected: str | None) -> None:
    assert normalize_sentence(raw) == expected


def test_fortune_parsing_strips_attribution_and_dedupes(tmp_path: Path) -> None:
    fortune = tmp_path / "wisdom"
    fortune.write_text(
        "A dream will always triumph over reality.\n\t\t-- Stanislaw Lem\n%\n"
        "Never trust a cat.  Cats are sly.\n%\n"
        "A dream will always  triumph over reality!\n%\n"
    )
    paragraphs = list(fortune_paragraphs(fortune))
    assert paragraphs[0] == "A dream will always triumph over reality."
    sentences = collect_sentences(paragraphs)
    assert sentences == ["A dream will always triumph over reality.", "Cats are sly.", "Never trust a cat."]


def test_default_voices_are_many_distinct_and_never_festival() -> None:
    voices = default_voices()
    ids = [v.id for v in voices]
    assert len(set(ids)) == len(ids) >= 300
    assert sum(v.engine in corpus_voices.NATURAL_ENGINES for v in voices) >= 150
    assert JOE in voices and JOE.id == "piper-joe"
    assert {v.engine for v in voices} == {"piper", "flite", "espeak", "kokoro", "hibari"}
    assert not any("festival" in i for i in ids)
    assert VoiceIdentity("flite", "slt", semitones=2).id == "flite-slt-p+2"
    assert VoiceIdentity("espeak", "en-us", "f2", -1, 1.1).id == "espeak-en-us+f2-p-1-t1.1"
    with pytest.raises(ValueError, match="festival"):
        VoiceIdentity("festival", "kal")
    with pytest.raises(ValueError, match="unknown flite voice"):
        VoiceIdentity("flite", "nosuchvoice")


def test_kokoro_mixtures_are_named_weights_of_its_style_tables() -> None:
    assert corpus_voices.kokoro_mixture("kumo") == {"kumo": 1.0}
    assert corpus_voices.kokoro_mixture("alpha60_kumo40") == {"alpha": 0.6, "kumo": 0.4}
    for bad in ("alpha60_kumo30", "alpha50_alpha50", "bob100", "alpha"[:3], "alpha0_kumo100"):
        with pytest.raises(ValueError, match="kokoro voice"):
            VoiceIdentity("kokoro", bad)
    mixtures = corpus_voices.kokoro_mixtures(40)
    assert len(set(mixtures)) == 40 and mixtures == corpus_voices.kokoro_mixtures(40)
    for name in mixtures:
        assert abs(sum(corpus_voices.kokoro_mixture(name).values()) - 1) < 1e-9


def test_plan_splits_are_disjoint_and_deterministic() -> None:
    sentences = collect_sentences([f"Sentence number {i} is here." for i in range(3000)])
    voices = default_voices()
    plan = corpus.plan_corpus(sentences, voices, hours=8.0, seed=3)
    assert plan == corpus.plan_corpus(sentences, voices, hours=8.0, seed=3)
    assert plan != corpus.plan_corpus(sentences, voices, hours=8.0, seed=4)
    by_split = {s: {u.text for u in plan if u.split == s} for s in corpus.SPLITS}
    assert not by_split["train"] & (by_split["val"] | by_split["test"])
    assert not by_split["val"] & by_split["test"]
    roles = corpus.split_speakers(voices, 3, 0.05)
    held_out = {v for v, role in roles.items() if role != "train"}
    assert held_out and roles["piper-joe"] == "train" and roles["flite-slt"] == "train"
    assert roles["hibari-heart"] == "train"
    assert any(voice.startswith("kokoro") for voice in held_out)
    assert sum(role == "train" for role in roles.values()) >= 250
    for u in plan:
        if u.speaker.id in held_out:
            assert u.split == roles[u.speaker.id]
    # Joe gets the largest share; a larger build extends each speaker's list as a prefix.
    seconds = {v.id: 0.0 for v in voices}
    for u in plan:
        seconds[u.speaker.id] += corpus.estimated_seconds(u.speaker, u.text)
    assert seconds["piper-joe"] > 0.25 * sum(seconds.values())
    bigger = corpus.plan_corpus(sentences, voices, hours=9.0, seed=3)
    assert {u.id for u in plan} <= {u.id for u in bigger}


def _tiny_voices() -> list[VoiceIdentity]:
    voices = [
        VoiceIdentity("flite", "slt"),
        VoiceIdentity("flite", "kal16", semitones=2),
        VoiceIdentity("espeak", "en-us", "m3"),
        VoiceIdentity("espeak", "en-gb", "f2", semitones=-2, tempo=1.1),
        VoiceIdentity("espeak", "en-029", "klatt", semitones=1),
    ]
    voices += [VoiceIdentity("hibari", "heart", semitones=-4), VoiceIdentity("kokoro", "gongitsune30_kumo70")]
    if engine_available("piper"):
        voices.insert(0, JOE)
    return [v for v in voices if engine_available(v.engine)]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, corpus.CorpusReport, list[list[str]]]:
    voices = _tiny_voices()
    if len({v.engine for v in voices}) < 2:
        pytest.skip("needs at least two of the speech engines (flite, espeak-ng, piper) installed")
    out = tmp_path_factory.mktemp("speech")
    commands: list[list[str]] = []
    real_run = subprocess.run

    def recording_run(cmd, *args, **kwargs):  # type: ignore[no-untyped-def]
        commands.append(list(cmd))
        return real_run(cmd, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(corpus_voices.subprocess, "run", recording_run)
        report = corpus.build_speech_corpus(
            out, hours=0.004, seed=0, workers=1, sentences=SENTENCES, voices=voices, eval_fraction=0.1, progress=False
        )
    return out, report, commands


def test_tiny_build_writes_24k_mono_and_manifest(tiny_corpus) -> None:  # type: ignore[no-untyped-def]
    out, report, commands = tiny_corpus
    assert report.failed == []
    assert report.utterances == report.planned == report.synthesized > 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == report.utterances
    for row in rows:
        assert set(row) == MANIFEST_FIELDS
        assert row["text"] in SENTENCES and row["sample_rate"] == 24_000
        info = sf.info(str(out / row["audio"]))
        assert (info.samplerate, info.channels, info.subtype) == (24_000, 1, "PCM_16")
        assert abs(info.duration - row["duration"]) < 1e-3 and 0.3 < row["duration"] < 10
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["engine"] for r in rows} == {v.engine for v in _tiny_voices()}
    # festival voices are held out for evaluation: never run
    assert commands and all(cmd[0] in ("flite", "espeak-ng") for cmd in commands)
    speakers = json.loads((out / "speakers.json").read_text())
    assert set(speakers) == {v.id for v in _tiny_voices()}


def test_tiny_build_splits_by_sentence_and_speaker(tiny_corpus) -> None:  # type: ignore[no-untyped-def]
    out, _, _ = tiny_corpus
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    texts = {s: {r["text"] for r in rows if r["split"] == s} for s in corpus.SPLITS}
    speakers = {s: {r["speaker"] for r in rows if r["split"] == s} for s in corpus.SPLITS}
    assert texts["train"] and texts["val"] and texts["test"]
    assert not texts["train"] & (texts["val"] | texts["test"]) and not texts["val"] & texts["test"]
    eval_only = (speakers["val"] | speakers["test"]) - speakers["train"]
    assert eval_only, "some speakers must be heard only in validation/test"


def test_rerun_synthesizes_nothing_and_rewrites_manifest(tiny_corpus, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    out, first, _ = tiny_corpus
    manifest = (out / "manifest.jsonl").read_text()
    (out / "manifest.jsonl").unlink()

    def no_synthesis(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("an existing utterance was synthesized again")

    monkeypatch.setattr(corpus, "synthesize", no_synthesis)
    report = corpus.build_speech_corpus(
        out, hours=0.004, seed=0, workers=1, sentences=SENTENCES, voices=_tiny_voices(), eval_fraction=0.1, progress=False
    )
    assert report.synthesized == 0 and report.skipped == first.planned and report.failed == []
    assert (out / "manifest.jsonl").read_text() == manifest


def test_failed_synthesis_is_reported_not_fatal(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    voices = [v for v in _tiny_voices() if v.engine != "piper"][:2]
    real = corpus.synthesize

    def flaky(voice: VoiceIdentity, text: str):  # type: ignore[no-untyped-def]
        if voice == voices[0]:
            raise RuntimeError("engine crashed")
        return real(voice, text)

    monkeypatch.setattr(corpus, "synthesize", flaky)
    report = corpus.build_speech_corpus(
        tmp_path, hours=0.001, seed=1, workers=1, sentences=SENTENCES, voices=voices, eval_fraction=0.1, progress=False
    )
    assert report.failed and all("engine crashed" in f["error"] for f in report.failed)
    assert report.utterances == report.planned - len(report.failed) > 0
    failures = (tmp_path / "failures.jsonl").read_text().splitlines()
    assert len(failures) == len(report.failed)


@pytest.mark.skipif(not engine_available("espeak"), reason="espeak-ng not installed")
def test_parallel_workers_build(tmp_path: Path) -> None:
    voices = [VoiceIdentity("espeak", "en-us", v) for v in ("m1", "f1", "m2")]
    report = corpus.build_speech_corpus(
        tmp_path, hours=0.002, seed=0, workers=2, sentences=SENTENCES, voices=voices, eval_fraction=0.1, progress=False
    )
    assert report.failed == [] and report.utterances == report.planned > 0


def test_engines_limit_what_a_run_synthesizes_not_the_plan(tmp_path: Path) -> None:
    voices = _tiny_voices()
    if not engine_available("espeak"):
        pytest.skip("needs espeak-ng")
    build = dict(hours=0.004, seed=0, workers=1, sentences=SENTENCES, voices=voices, eval_fraction=0.1, progress=False)
    report = corpus.build_speech_corpus(tmp_path, engines=["espeak"], **build)
    rows = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert rows and {r["engine"] for r in rows} == {"espeak"} and report.failed == []
    assert report.planned == len(corpus.plan_corpus(SENTENCES, voices, 0.004, 0, eval_fraction=0.1))
    with pytest.raises(ValueError, match="unknown speech engines: festival"):
        corpus.build_speech_corpus(tmp_path, engines=["festival"], **build)
