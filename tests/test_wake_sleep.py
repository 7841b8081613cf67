"""Wake-sleep: section runs, windowed labelling, the pseudo-labelled corpus, and the whole loop via the CLI.

Whether a piece is kept depends on what the classifier hears; a tiny untrained classifier hears one
section everywhere. The tests that need pieces kept use a labeller that returns chosen probabilities
(`pattern_labeller`), and the ones about the classifier itself use a tiny real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cadenza.cli import app
from cadenza.core.checkpoint import load_model, save_pretrained
from cadenza.staria.cache import TokenCache
from cadenza.staria.forms import FORM_LABEL_MAP, form_from_labels
from cadenza.staria.labeller import SectionLabeller
from cadenza.staria.models import PRESETS, SectionClassifier, StariaConfig, StariaSeq2Seq
from cadenza.staria.prompt import section_spans
from cadenza.staria.synthetic import section_letters
from cadenza.staria.tokenizer import StariaTokenizer
from cadenza.staria.wake_sleep import WakeConfig, pseudo_label, section_runs, wake

TOK = StariaTokenizer()


@pytest.fixture(scope="module")
def tiny_synth(real_corpus, tmp_path_factory) -> Path:
    """Synthetic pieces of 128-256 tokens: 2 train and 1 val/test piece per form."""
    from cadenza.staria.synthetic import synthesize

    root = tmp_path_factory.mktemp("tiny_synth")
    synthesize(real_corpus, root, per_form=2, eval_per_form=1, min_tokens=128, max_tokens=256, progress=False)
    return root


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> Path:
    """An untrained tiny classifier exported like `cadenza music train classifier` does."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("classifier") / "model"
    save_pretrained(SectionClassifier(PRESETS["tiny"]), PRESETS["tiny"], directory, extra={"task": "classifier"})
    return directory


def pattern_labeller(pattern: str, probability: float = 0.7):
    """Probabilities that spell `pattern` over equal parts of each piece, the letter at `probability`."""
    def label(pieces):
        out = []
        for ids in pieces:
            n = len(ids)
            probs = np.full((n, 4), (1 - probability) / 3, dtype=np.float32)
            part = np.minimum(np.arange(n) * len(pattern) // max(n, 1), len(pattern) - 1)
            probs[np.arange(n), np.array(["ABCD".index(c) for c in pattern])[part]] = probability
            out.append(probs)
        return out
    return label


def test_section_runs_spell_what_form_from_labels_spells():
    rng = np.random.default_rng(0)
    for _ in range(500):
        labels = np.repeat(rng.integers(0, 4, size=8), rng.integers(1, 15, size=8))[:int(rng.integers(1, 80))]
        runs = section_runs(labels, 0.05)
        letters = "".join("ABCD"[label] for label, _, _ in runs)
        assert form_from_labels(letters) == form_from_labels(labels)
        assert runs[0][1] == 0 and runs[-1][2] == len(labels)
        assert all(a[2] == b[1] and a[0] != b[0] for a, b in zip(runs, runs[1:]))
    # A 2-token blip inside a long A section is noise: it joins the section before it.
    assert section_runs(np.array([0] * 40 + [1] * 2 + [0] * 40 + [2] * 30)) == [(0, 0, 82), (2, 82, 112)]


def test_labeller_windows_tile_the_piece_and_match_the_model():
    torch.manual_seed(0)
    model = SectionClassifier(PRESETS["tiny"].with_overrides(max_seq_len=64)).eval()
    labeller = SectionLabeller(model, batch_size=3, overlap=16)
    for n in (1, 63, 64, 65, 200):
        windows = labeller.windows(n)
        kept = [i for _, _, a, b in windows for i in range(a, b)]
        assert kept == list(range(n)) and all(e - s <= 64 for s, e, _, _ in windows)

    pieces = [np.random.default_rng(k).integers(200, 5000, size=n) for k, n in enumerate((200, 40, 64))]
    probs = labeller(pieces)
    assert [p.shape for p in probs] == [(200, 4), (40, 4), (64, 4)]
    with torch.no_grad():
        for (start, end, keep_from, keep_to) in labeller.windows(200):
            ids = torch.as_tensor(pieces[0][start:end])[None]
            direct = model(ids, torch.ones_like(ids, dtype=torch.bool))[0].softmax(-1)[0].numpy()
            np.testing.assert_allclose(probs[0][keep_from:keep_to], direct[keep_from - start:keep_to - start],
                                       atol=1e-5)
    one_by_one = SectionLabeller(model, batch_size=1, overlap=16)(pieces)  # padding must not change a thing
    for a, b in zip(probs, one_by_one):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_pseudo_label_inserts_section_tokens_at_section_starts(real_corpus):
    ids = TOK.strip_sections(TokenCache(real_corpus).ids(0))[0]
    result = pseudo_label(TOK, ids, pattern_labeller("ABAC")([ids])[0], threshold=0.5)
    assert result.kept and result.form == "ABAC" and result.confidence == pytest.approx([0.7] * 4)
    assert section_letters(TOK, result.ids) == "ABAC"
    assert np.array_equal(TOK.strip_sections(result.ids)[0], ids)  # the music itself is untouched
    for (_, start, _), quarter in zip(section_spans(TOK, result.ids), range(4)):
        assert abs(start - quarter * len(ids) / 4) < 8  # within a note or two of where the labels change

    assert pseudo_label(TOK, ids, pattern_labeller("ABAC")([ids])[0], threshold=0.71).reason == "confidence"
    assert pseudo_label(TOK, ids, pattern_labeller("A")([ids])[0], threshold=0).reason == "form"


@pytest.mark.parametrize("pattern", ["ABA", "BCBD"])
def test_wake_threshold_zero_keeps_every_piece_with_its_sections(real_corpus, tmp_path, pattern):
    out = tmp_path / "pseudo"
    report = wake(real_corpus, out, pattern_labeller(pattern), WakeConfig(threshold=0.0), progress=False)
    source = TokenCache(real_corpus)
    form = form_from_labels(pattern)
    assert report["kept"] == report["pieces"] == len(source) == 14
    assert report["per_form"] == {form: {"kept": 14, "dropped": 0}}
    cache = TokenCache(out)
    assert len(cache) == len(source)
    for i, row in enumerate(cache.rows):
        assert section_letters(TOK, cache.ids(i)) == row["form"] == form
        assert row["form_label"] == FORM_LABEL_MAP[form] and row["confidence"] == pytest.approx(0.7, abs=1e-3)
        assert row["source"] == f"pseudo:{Path(real_corpus).name}" and row["original_source"] == "music21"
        assert row["split"] == source.rows[i]["split"] and row["n_tokens"] == len(cache.ids(i))
    assert json.loads((out / "wake_report.json").read_text()) == report

    report = wake(real_corpus, out, pattern_labeller(pattern), WakeConfig(threshold=0.8), progress=False)
    assert report["kept"] == 0 and report["dropped_because"] == {"confidence": 14} and len(TokenCache(out)) == 0


def test_wake_with_a_tiny_classifier(real_corpus, tiny_classifier, tmp_path):
    labeller = SectionLabeller.from_pretrained(tiny_classifier, batch_size=4, overlap=64)
    n_pieces = len(TokenCache(real_corpus))
    assert max(len(TokenCache(real_corpus).ids(i)) for i in range(n_pieces)) > 512  # windows are needed
    for threshold in (0.0, 1.01):
        out = tmp_path / f"pseudo_{threshold}"
        report = wake(real_corpus, out, labeller, WakeConfig(threshold=threshold), progress=False)
        cache = TokenCache(out)  # valid: manifest, tokens and index agree
        assert report["pieces"] == n_pieces == report["kept"] + report["dropped"]
        assert sum(c["kept"] + c["dropped"] for c in report["per_form"].values()) == n_pieces
        assert sum(c["kept"] for c in report["per_form"].values()) == report["kept"] == len(cache)
        assert sum(report["dropped_because"].values()) == report["dropped"]
        assert len((out / "report.jsonl").read_text().splitlines()) == report["dropped"]
        assert report["classifier"] == str(tiny_classifier)
        for i, row in enumerate(cache.rows):
            assert section_letters(TOK, cache.ids(i)) == row["form"]
        if threshold == 0.0:  # every piece with a usable form is kept, whatever its confidence
            usable = sum(c["kept"] + c["dropped"] for f, c in report["per_form"].items() if f not in ("A", "other"))
            assert report["kept"] == usable
        else:
            assert report["kept"] == 0


def test_wake_sleep_cli_runs_two_rounds(real_corpus, tiny_synth, tmp_path, monkeypatch):
    # The classifier trained for 2 steps hears one section everywhere; it is loaded, then heard as ABA.
    real_load = SectionLabeller.from_pretrained

    def load_then_hear_aba(directory, **kwargs):
        real_load(directory, **kwargs)
        return pattern_labeller("ABA", 0.95)

    monkeypatch.setattr(SectionLabeller, "from_pretrained", staticmethod(load_then_hear_aba))
    tiny = ["model.preset=tiny", "data.max_seq_len=256", "data.snippet_len=32", "train.batch_size=2",
            "train.threads=1", "train.warmup_steps=1", "train.val_every_n_steps=1000", "train.limit_val_batches=1",
            "train.max_steps=2", "train.accelerator=cpu"]
    args = ["music", "wake-sleep", "--out", str(tmp_path), "--synthetic", str(tiny_synth), "--corpus",
            str(real_corpus), "--rounds", "2", "--dreams-per-form", "1", "--dream-max-tokens", "128",
            *[f"{model}.{o}" for o in tiny for model in ("classifier", "generator")]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ABA" in result.output and "total" in result.output
    for r in (1, 2):
        load_model(tmp_path / f"round{r}/classifier/model", StariaConfig, SectionClassifier)
        load_model(tmp_path / f"round{r}/generator/model", StariaConfig, StariaSeq2Seq)
        assert len(TokenCache(tmp_path / f"round{r}/pseudo")) == 14
    dreams = TokenCache(tmp_path / "round2/dreams")
    assert len(dreams) > 0
    for i, row in enumerate(dreams.rows):
        assert section_letters(TOK, dreams.ids(i)) == row["form"]
    config = json.loads((tmp_path / "round2/classifier/model/config.json").read_text())["extra"]["config"]
    assert config["model"]["init_from"] == str(tmp_path / "round1/classifier/model")
    assert [c[0] for c in config["data"]["corpora"]] == [str(tiny_synth), str(tmp_path / "round2/dreams")]


def test_wake_sleep_cli_errors_name_the_problem(tmp_path, tiny_classifier):
    runner = CliRunner()
    result = runner.invoke(app, ["music", "wake-sleep", "--out", str(tmp_path), "train.max_steps=2"])
    assert result.exit_code == 2 and "classifier." in result.output
    result = runner.invoke(app, ["music", "wake-sleep", "--out", str(tmp_path), "--stage", "wake",
                                 "--classifier", str(tiny_classifier)])
    assert result.exit_code == 2 and "--corpus" in result.output
    result = runner.invoke(app, ["music", "wake-sleep", "--out", str(tmp_path), "--stage", "nap"])
    assert result.exit_code == 2 and "unknown stage" in result.output
