"""Contrastive encoder evaluation: snippet pairs, same-piece retrieval scores, `music eval-encoder`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cadenza.cli import app
from cadenza.core.checkpoint import save_pretrained
from cadenza.staria import encoder_eval
from cadenza.staria.cache import TokenCache, write_cache
from cadenza.staria.encoder_eval import evaluate_encoder, retrieval_ranks, retrieval_scores
from cadenza.staria.models import PRESETS, SectionClassifier, SnippetEncoder
from cadenza.staria.snippets import pair_starts

SNIPPET_LEN = 60  # 20 notes: the test chorales have room for two such snippets


def _save(model: torch.nn.Module, directory: Path, task: str) -> Path:
    extra = {"task": task, "config": {"data": {"snippet_len": SNIPPET_LEN}}}  # as `music train` exports
    save_pretrained(model, PRESETS["tiny"], directory, extra=extra)
    return directory


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return _save(SnippetEncoder(PRESETS["tiny"]), tmp_path_factory.mktemp("encoder") / "model", "encoder")


def run(*args: str):
    return CliRunner().invoke(app, ["music", "eval-encoder", *map(str, args)])


@pytest.mark.parametrize("n_events", [1, 2, 7, 16, 59, 60, 61, 500])
def test_pair_starts_never_overlap_and_stay_in_the_piece(n_events):
    rng = np.random.default_rng(0)
    for _ in range(50):
        first, second, length = pair_starts(n_events, 30, rng)
        assert length == max(1, min(30, n_events // 2))
        assert 0 <= first and second + length <= max(n_events, 1)
        assert n_events < 2 or first + length <= second


def test_eval_encoder_cli_reports_scores_in_range(tiny_encoder, real_corpus, tmp_path):
    out = tmp_path / "report.json"
    result = run(tiny_encoder, "--corpus", real_corpus, "--pieces", 4, "--out", out)
    assert result.exit_code == 0, result.output
    assert "top-1" in result.output and "chance" in result.output
    report = json.loads(out.read_text())
    assert report["n_pieces"] == len(report["pieces"]) == 4 and report["split"] == "test"
    assert report["snippet_len"] == SNIPPET_LEN and report["mean_snippet_notes"] == SNIPPET_LEN // 3
    assert 0 <= report["top1"] <= report["top5"] <= 1 and report["top5"] == 1.0  # 5 >= 4 candidates
    assert report["chance_top1"] == 0.25 and 1 <= report["mean_rank"] <= 4
    for piece in report["pieces"]:
        first, second = piece["starts"]
        assert first + piece["snippet_notes"] <= second and second + piece["snippet_notes"] <= piece["n_notes"]
        assert all(1 <= rank <= 4 for rank in piece["ranks"]) and piece["augmentation"] == [0, 0, 1.0]
    assert report["target"]["met"] is False  # 4 pieces are too few to meet it


def test_seed_decides_pieces_and_places_and_augment_changes_the_second_snippet(tiny_encoder, real_corpus):
    def places(**kwargs):
        report = evaluate_encoder(tiny_encoder, real_corpus, split="val", n_pieces=3, **kwargs)
        return [(p["id"], p["starts"]) for p in report["pieces"]], report

    assert places(seed=1)[0] == places(seed=1)[0] != places(seed=2)[0]
    _, augmented = places(seed=1, augment=True)
    assert augmented["augment"] and any(p["augmentation"] != [0, 0, 1.0] for p in augmented["pieces"])


def test_same_snippet_twice_is_retrieved_perfectly(tiny_encoder, real_corpus, monkeypatch):
    """Both snippets of a piece cut at one place: even an untrained encoder finds every piece first."""
    def same_place(n_events, n_notes, rng):
        start, _, length = pair_starts(n_events, n_notes, rng)
        return start, start, length

    monkeypatch.setattr(encoder_eval, "pair_starts", same_place)
    report = evaluate_encoder(tiny_encoder, real_corpus, split="train", n_pieces=6)
    assert report["top1"] == report["top5"] == 1.0 and report["mean_rank"] == 1.0


def test_retrieval_scores_count_ties_against_the_query():
    rng = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(10, 8, generator=rng), dim=-1)
    assert retrieval_scores(retrieval_ranks(a, a), 10)["top1"] == 1.0
    same = torch.ones(10, 8) / 8 ** 0.5  # one point for every snippet: nothing is retrieved
    scores = retrieval_scores(retrieval_ranks(same, same), 10)
    assert scores["top1"] == scores["top5"] == 0.0 and scores["mean_rank"] == 10
    swapped = retrieval_ranks(a, a.flip(0))  # every query's own key is elsewhere
    assert retrieval_scores(swapped, 10)["top1"] == 0.0


@pytest.fixture(scope="module")
def train_only_corpus(real_corpus, tmp_path_factory) -> Path:
    cache = TokenCache(real_corpus)
    train = cache.indices("train")
    root = tmp_path_factory.mktemp("train_only")
    write_cache(root, [cache.rows[i] for i in train], [np.asarray(cache.ids(i)) for i in train])
    return root


def test_bad_inputs_fail_with_a_message_naming_them(tiny_encoder, real_corpus, train_only_corpus, tmp_path):
    classifier = tmp_path / "classifier"
    _save(SectionClassifier(PRESETS["tiny"]), classifier, "classifier")
    cases = [
        ((tmp_path / "nothing", "--corpus", real_corpus), ["nothing", "not found"]),
        ((real_corpus, "--corpus", real_corpus), ["no config.json"]),
        ((classifier, "--corpus", real_corpus), ["'classifier' model", "not a contrastive snippet encoder"]),
        ((tiny_encoder, "--corpus", tmp_path / "no_corpus"), ["no_corpus", "not a corpus directory"]),
        ((tiny_encoder, "--corpus", train_only_corpus), ["train_only", "no pieces in split 'test'", "train 6"]),
        ((tiny_encoder, "--corpus", real_corpus, "--split", "dev"), ["unknown split 'dev'"]),
        ((tiny_encoder, "--corpus", real_corpus, "--pieces", 5), ["4 pieces", "fewer than the 5 asked for"]),
        ((tiny_encoder, "--corpus", real_corpus, "--snippet-len", 5000), ["snippet_len", "5000"]),
    ]
    for args, words in cases:
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "Traceback" not in result.output and "error:" in result.output
        for word in words:
            assert word in result.output, (args, word, result.output)
    usage = run(tiny_encoder, "--corpus", real_corpus, "--pieces", 1)
    assert usage.exit_code == 2 and "--pieces" in usage.output


def test_trained_encoder_export_is_what_eval_encoder_reads(real_corpus, tmp_path):
    """`music train encoder` for 2 steps on the chorales, then its export evaluated with its own snippet_len."""
    run_dir = tmp_path / "run"
    train = CliRunner().invoke(app, [
        "music", "train", "encoder", "model.preset=tiny", f"data.corpora=[{real_corpus}]", "data.snippet_len=45",
        "train.batch_size=3", "train.max_steps=2", "train.threads=1", "train.warmup_steps=1",
        "train.val_every_n_steps=1000", "train.limit_val_batches=1", "train.accelerator=cpu",
        f"train.run_dir={run_dir}"])
    assert train.exit_code == 0, train.output
    report = evaluate_encoder(run_dir / "model", real_corpus, n_pieces=4)
    assert report["snippet_len"] == 45 and 0 <= report["top1"] <= 1
