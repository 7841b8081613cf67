"""Evaluation: form adherence on synthetic pieces and negative controls, music statistics, hooks, CLI."""

import json
import math
from itertools import permutations

import numpy as np
import pytest
from typer.testing import CliRunner

from cadenza.cli import app
from cadenza.staria import StariaTokenizer
from cadenza.staria.cache import TokenCache
from cadenza.staria.piece_eval import (
    empty_beat_rate, estimate_beat_ms, evaluate_dir, evaluate_piece, groove_consistency, music_statistics,
    perplexity, recovered_form_by_classifier,
)
from cadenza.staria.form_adherence import (
    form_adherence, judge_form, load_piece, onset_roll, recover_form, roll_similarity, split_sections,
)
from cadenza.staria.events import NO_SECTION, MusicEvents, events_to_score

FORMS = ("ABA", "ABAB", "ABAC", "ABCA", "AABB")
tok = StariaTokenizer()


def notes(onset, duration, pitch, instrument=0, section=None) -> MusicEvents:
    n = len(onset)
    return MusicEvents(np.asarray(onset, dtype=np.int64), np.asarray(duration, dtype=np.int64),
                       np.asarray(pitch, dtype=np.int64), np.full(n, 80), np.full(n, instrument),
                       np.full(n, NO_SECTION) if section is None else np.asarray(section))


def stitch(parts: list[tuple[str, MusicEvents]]) -> MusicEvents:
    """Sections one after another, each marked with its letter."""
    out, start = [], 0
    for letter, ev in parts:
        ev = ev.shifted(start - int(ev.onset_ms[0])).with_section("ABCD".index(letter))
        out.append(ev)
        start = ev.end_ms + 200
    return MusicEvents.concat(out)


@pytest.fixture(scope="module")
def synthetic_pieces(synthetic_corpus) -> dict[str, list[np.ndarray]]:
    cache = TokenCache(synthetic_corpus)
    pieces: dict[str, list[np.ndarray]] = {}
    for i, row in enumerate(cache.rows):
        if row["form"] in FORMS:
            pieces.setdefault(row["form"], []).append(np.asarray(cache.ids(i)))
    return pieces


@pytest.fixture(scope="module")
def chorales(real_corpus) -> list[MusicEvents]:
    cache = TokenCache(real_corpus)
    return [tok.ids_to_events(cache.ids(i))[0] for i in range(len(cache))]


def opening(events: MusicEvents, n: int) -> MusicEvents:
    return events.take(slice(0, n))


# ---- form adherence ---------------------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
def test_true_synthetic_forms_are_found(synthetic_pieces, form):
    for ids in synthetic_pieces[form]:
        result = form_adherence(ids)
        assert result.letters == form
        assert result.form_found, result.reasons
        assert result.recovered_form == form
        assert result.min_same >= 0.6 > 0.45 > result.max_different


@pytest.mark.parametrize("form", FORMS)
def test_shuffled_letters_are_rejected(synthetic_pieces, form):
    def grouping(letters):
        return tuple(letters.index(c) for c in letters)
    others = sorted({"".join(p) for p in permutations(form) if grouping("".join(p)) != grouping(form)})
    for ids in synthetic_pieces[form]:
        true = form_adherence(ids)
        for letters in others:
            found, reasons = judge_form(letters, true.similarity, true.section_notes)
            assert not found and reasons, (form, letters)
        relabelled = form_adherence(ids, letters=others[0])
        assert not relabelled.form_found and relabelled.letters == others[0]
        assert relabelled.recovered_form == form  # the material still spells the true form


@pytest.mark.parametrize("form", FORMS)
def test_different_sources_with_the_same_letter_are_rejected(chorales, form):
    parts = [(letter, opening(chorales[k], 60)) for k, letter in enumerate(form)]
    result = form_adherence(stitch(parts))
    assert not result.form_found
    assert any("not alike" in r for r in result.reasons)
    assert result.recovered_form == "ABCD"[:len(form)]


@pytest.mark.parametrize("form", FORMS)
def test_one_source_for_every_letter_is_rejected(chorales, form):
    """The generator that never leaves its first section: every letter replays the same opening."""
    parts = [(letter, opening(chorales[0], 40 + 10 * k)) for k, letter in enumerate(form)]
    result = form_adherence(stitch(parts))
    assert not result.form_found
    assert any("not distinct" in r for r in result.reasons)
    assert result.recovered_form == "A" * len(form)


def test_transposed_and_shortened_repeats_are_alike(chorales):
    a = opening(chorales[1], 80)
    shorter_up = opening(chorales[1], 30)
    shorter_up.pitch = shorter_up.pitch + 5
    assert roll_similarity(onset_roll(a, 0), onset_roll(shorter_up, 0)) > 0.99
    result = form_adherence(stitch([("A", a), ("B", opening(chorales[2], 60)), ("A", shorter_up)]))
    assert result.form_found, result.reasons


def test_too_short_sections_are_not_judged(chorales):
    result = form_adherence(stitch([("A", opening(chorales[3], 40)), ("B", opening(chorales[4], 5)),
                                    ("A", opening(chorales[3], 40))]))
    assert not result.form_found
    assert any("has 5 notes" in r for r in result.reasons)


def test_piece_inputs_agree_and_empty_sections_count(synthetic_pieces, tmp_path):
    ids = synthetic_pieces["ABAB"][0]
    score = tok.detokenize(ids)
    path = tmp_path / "piece.mid"
    score.dump_midi(str(path))
    from_ids, from_path = form_adherence(ids), form_adherence(path)
    assert from_ids.letters == from_path.letters == from_ids.marker_letters == "ABAB"
    assert from_ids.section_notes == from_path.section_notes
    np.testing.assert_allclose(from_ids.similarity, from_path.similarity, atol=1e-6)

    # A last marker with no notes after it: the markers spell ABAB, only ABA holds notes.
    events, _ = load_piece(ids)
    last = np.flatnonzero(events.section != NO_SECTION)[-1]
    truncated = events.take(slice(0, last))
    score = events_to_score(truncated)
    from symusic import TextMeta
    score.markers.append(TextMeta(int(truncated.end_ms) + 100, "B"))
    result = form_adherence(score)
    assert result.marker_letters == "ABAB" and result.letters == "ABA"
    assert not result.form_found and "markers spell ABAB" in result.reasons[0]


def test_requested_form_must_match_markers(synthetic_pieces):
    ids = synthetic_pieces["ABA"][0]
    assert evaluate_piece(ids, form="ABA")["form_found"]
    wrong = evaluate_piece(ids, form="ABAB")
    assert not wrong["form_found"] and not wrong["markers_match_form"]


def test_piece_without_markers_is_one_section(chorales):
    sections = split_sections(opening(chorales[0], 50))
    assert [s.letter for s in sections] == ["A"] and len(sections[0].events) == 50
    result = form_adherence(opening(chorales[0], 50))
    assert result.form_found and result.recovered_form == "A"


def test_recover_form_clusters_by_first_appearance():
    s = np.array([[1, .1, .9, .2], [.1, 1, .1, .8], [.9, .1, 1, .1], [.2, .8, .1, 1]])
    assert recover_form(s) == "ABAB"
    assert recover_form(np.ones((3, 3))) == "AAA"


# ---- music statistics -------------------------------------------------------------------------------

C_MAJOR = [60, 62, 64, 65, 67, 69, 71]


def test_statistics_of_a_c_major_scale():
    scale = notes(np.arange(7) * 500, [500] * 7, C_MAJOR)
    stats = music_statistics(scale, beat_ms=500)
    assert stats["pitch_class_entropy"] == pytest.approx(math.log2(7))
    assert stats["scale_consistency"] == 1.0
    assert stats["pitch_range"] == 11 and stats["n_pitch_classes"] == 7
    assert stats["polyphony"] == 1.0 and stats["polyphony_rate"] == 0.0
    assert stats["empty_beat_rate"] == 0.0
    assert stats["note_density"] == pytest.approx(2.0)  # 7 notes in 3.5 s
    assert estimate_beat_ms(notes(np.arange(16) * 500, [250] * 16, [60] * 16)) == 500


def test_statistics_with_known_answers():
    chromatic = notes(np.arange(12) * 100, [100] * 12, np.arange(60, 72))
    assert music_statistics(chromatic, 500)["pitch_class_entropy"] == pytest.approx(math.log2(12))
    assert music_statistics(chromatic, 500)["scale_consistency"] == pytest.approx(7 / 12)
    chord = notes([0, 0, 0], [1000] * 3, [60, 64, 67])
    stats = music_statistics(chord, 500)
    assert stats["polyphony"] == 3.0 and stats["polyphony_rate"] == 1.0
    # notes on beats 0, 2, 4 lasting one beat: beats 1 and 3 are empty
    assert empty_beat_rate(notes([0, 1000, 2000], [500] * 3, [60] * 3), 500) == pytest.approx(2 / 5)
    # measure 1: onsets on all 4 beats; measure 2: on beats 1 and 3 -> 2 of 96 positions differ
    groove = notes([0, 500, 1000, 1500, 2000, 3000], [100] * 6, [60] * 6)
    assert groove_consistency(groove, 500) == pytest.approx(1 - 2 / 96)
    steady = notes(np.arange(16) * 500, [100] * 16, [60] * 16)
    assert groove_consistency(steady, 500) == 1.0


# ---- model hooks ------------------------------------------------------------------------------------

def test_classifier_hook_and_perplexity(synthetic_pieces):
    ids = synthetic_pieces["ABAC"][0]
    stripped, labels = tok.strip_sections(ids)

    def oracle(x: np.ndarray) -> np.ndarray:
        assert not np.isin(x, tok.section_ids).any()  # the classifier never sees section tokens
        return np.eye(4)[labels[:len(x)]]

    assert recovered_form_by_classifier(oracle, ids) == "ABAC"
    result = evaluate_piece(ids, form="ABAC", classifier_fn=oracle, nll_fn=lambda x: (len(x) * math.log(5), len(x)))
    assert result["classifier_form"] == "ABAC" and result["classifier_token_accuracy"] == 1.0
    assert result["perplexity"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="shape"):
        recovered_form_by_classifier(lambda x: np.zeros((3, 4)), ids)
    assert perplexity(lambda x: (2.0 * len(x), len(x)), [ids, ids[:10]])["perplexity"] == pytest.approx(math.e ** 2)


# ---- directories and the CLI ------------------------------------------------------------------------

@pytest.fixture
def midi_dir(synthetic_pieces, tmp_path):
    folder = tmp_path / "generated"
    folder.mkdir()
    for k, ids in enumerate(synthetic_pieces["ABA"][:2]):
        tok.detokenize(ids).dump_midi(str(folder / f"piece{k}.mid"))
    (folder / "broken.mid").write_bytes(b"RIFF....WAVEfmt ")
    return folder


def test_evaluate_dir_reports_bad_files(midi_dir):
    report = evaluate_dir(midi_dir, "ABA")
    assert report["n_files"] == 3 and report["n_evaluated"] == 2
    assert report["skipped"][0]["path"] == "broken.mid" and "not MIDI" in report["skipped"][0]["error"]
    assert report["aggregate"]["form_found_rate"] == 1.0
    assert report["aggregate"]["markers_match_form_rate"] == 1.0
    json.dumps(report)  # JSON-ready


def test_cli_prints_table_and_writes_json(midi_dir, tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["music", "evaluate", str(midi_dir), "--form", "ABA", "--out", str(out)])
    assert result.exit_code == 1, result.output  # one file was skipped
    assert "piece0" in result.output and "broken.mid" in result.output
    report = json.loads(out.read_text())
    assert [p["name"] for p in report["pieces"]] == ["piece0.mid", "piece1.mid"]
    assert all(p["form_found"] and p["recovered_form"] == "ABA" for p in report["pieces"])
    assert {"pitch_class_entropy", "groove_consistency", "empty_beat_rate"} <= set(report["pieces"][0]["statistics"])
    bad_form = CliRunner().invoke(app, ["music", "evaluate", str(midi_dir), "--form", "XYZ"])
    assert bad_form.exit_code == 2


def test_cli_with_classifier_and_heldout_perplexity(midi_dir, real_corpus, tmp_path):
    import torch

    from cadenza.core.checkpoint import save_pretrained
    from cadenza.staria.generate import StariaGenerator
    from cadenza.staria.models import PRESETS, SectionClassifier, StariaSeq2Seq

    torch.manual_seed(0)
    generator, classifier = StariaSeq2Seq(PRESETS["tiny"]), SectionClassifier(PRESETS["tiny"])
    save_pretrained(generator, PRESETS["tiny"], tmp_path / "gen")
    save_pretrained(classifier, PRESETS["tiny"], tmp_path / "cls")
    out = tmp_path / "report.json"
    args = ["music", "evaluate", str(midi_dir), "--form", "ABA", "--out", str(out), "--classifier",
            str(tmp_path / "cls"), "--model", str(tmp_path / "gen"), "--heldout", str(real_corpus)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output  # broken.mid is still skipped
    report = json.loads(out.read_text())
    heldout = report["heldout"]
    assert heldout["n_pieces"] == 4 and heldout["split"] == "test" and "held-out" in result.output
    # An untrained model is about as unsure as a uniform guess over the vocabulary.
    assert 0.2 * tok.vocab_size < heldout["perplexity"] < 5 * tok.vocab_size
    nll, n = StariaGenerator(generator).nll(TokenCache(real_corpus).ids(0))
    assert n > 0 and nll / n == pytest.approx(math.log(tok.vocab_size), rel=0.3)
    assert all("classifier_form" in p for p in report["pieces"])
    alone = CliRunner().invoke(app, ["music", "evaluate", str(midi_dir), "--model", str(tmp_path / "gen")])
    assert alone.exit_code == 2 and "go together" in alone.output
