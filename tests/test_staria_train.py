"""`cadenza music train` on tiny models: export, resume, 2-process DDP on CPU, staged fine-tuning, init_from.

The corpus is synthetic pieces of 128-256 tokens cut from the conftest chorales; every run is a few steps
of the `tiny` preset on one thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cadenza.cli import app
from cadenza.core.checkpoint import CheckpointError, load_model, load_pretrained, save_pretrained
from cadenza.core.training import train_config
from cadenza.staria.models import PRESETS, SectionClassifier, StariaConfig, StariaSeq2Seq
from cadenza.staria.tasks import GeneratorTask, apply_stage, decoder_layer_groups
from cadenza.staria.train import train

TINY = ["model.preset=tiny", "data.max_seq_len=256", "data.snippet_len=32", "train.batch_size=2",
        "train.threads=1", "train.warmup_steps=1", "train.val_every_n_steps=1000", "train.limit_val_batches=1",
        "train.log_every_n_steps=1", "train.accelerator=cpu"]


@pytest.fixture(scope="module")
def tiny_synth(real_corpus, tmp_path_factory) -> Path:
    """Synthetic pieces of 128-256 tokens: 2 train and 1 val/test piece per form."""
    from cadenza.staria.synthetic import synthesize

    root = tmp_path_factory.mktemp("tiny_synth")
    synthesize(real_corpus, root, per_form=2, eval_per_form=1, min_tokens=128, max_tokens=256, progress=False)
    return root


def overrides(corpus: Path, run_dir: Path, **changes) -> list[str]:
    extra = [f"{key.replace('__', '.')}={value}" for key, value in changes.items()]
    return [*TINY, f"data.corpora=[{corpus}]", f"train.run_dir={run_dir}", *extra]


def test_train_classifier_cli_exports_a_loadable_model(tiny_synth, tmp_path):
    run_dir = tmp_path / "run"
    args = ["music", "train", "classifier", *overrides(tiny_synth, run_dir, train__max_steps=4)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model, cfg = load_model(run_dir / "model", StariaConfig, SectionClassifier)
    assert isinstance(model, SectionClassifier) and cfg == PRESETS["tiny"]
    _, document = load_pretrained(run_dir / "model")
    assert document["extra"]["task"] == "classifier" and document["extra"]["step"] == 4


def test_resume_continues_from_the_saved_step(tiny_synth, tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = overrides(tiny_synth, run_dir, train__checkpoint_every_n_steps=2, train__min_lr=3e-4)
    train("staria", None, [*base, "train.max_steps=2"])
    first = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert first["global_step"] == 2
    capsys.readouterr()

    train("staria", None, [*base, "train.max_steps=4"], resume=True)
    assert "resuming from" in capsys.readouterr().err
    last = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert last["global_step"] == 4
    # Adam's own step counter carries over: 4 updates in all, not 2 of a fresh start.
    adam_steps = {float(s["step"]) for s in last["optimizer_states"][0]["state"].values()}
    assert adam_steps == {4.0}
    logged = (run_dir / "logs/version_1/metrics.csv").read_text().splitlines()
    steps = {int(line.split(",")[header_index(logged, "step")]) for line in logged[1:]}
    assert min(steps) >= 2
    assert load_pretrained(run_dir / "model")[1]["extra"]["step"] == 4


def header_index(lines: list[str], name: str) -> int:
    return lines[0].split(",").index(name)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_through_the_cli(tiny_synth, tmp_path):
    run_dir = tmp_path / "run"
    args = overrides(tiny_synth, run_dir, train__max_steps=3, train__checkpoint_every_n_steps=2)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    # Lightning starts rank 1 by re-running this command line: `python -m cadenza` (src/cadenza/__main__.py).
    command = [sys.executable, "-m", "cadenza", "music", "train", "classifier", *args, "--devices", "2",
               "--strategy", "ddp"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 3
    load_model(run_dir / "model", StariaConfig, SectionClassifier)


def trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_staged_freezing_leaves_the_right_parameters_trainable():
    model = StariaSeq2Seq(PRESETS["tiny"])
    layers = model.decoder.attn_layers
    prefix = "model.decoder.net.attn_layers."
    cross = {i for i, kind in enumerate(layers.layer_types) if kind == "c"}
    assert len(cross) == PRESETS["tiny"].dec_depth

    apply_stage(model, "cross_attention")
    names = trainable(model)
    assert names == {n for n, _ in model.named_parameters()
                     if any(n.startswith(f"{prefix}layers.{i}.") for i in cross) or n.startswith(f"{prefix}final_norm")}
    assert any(".to_q." in n for n in names) and any(n.endswith("0.0.gamma") for n in names)  # blocks + their norms
    assert not any(n.startswith("model.encoder") or "token_emb" in n for n in names)

    apply_stage(model, "top_decoder", top_layers=1)
    top = decoder_layer_groups(model)[-1]
    assert layers.layer_types[top[0]] == "a" and len(top) == 3
    in_top = {n for n, _ in model.named_parameters() if any(n.startswith(f"{prefix}layers.{i}.") for i in top)}
    expected = names | in_top
    assert trainable(model) == expected and any(".ff." in n for n in expected)

    for stage in ("encoder", "all"):
        apply_stage(model, stage)
        assert trainable(model) == {n for n, _ in model.named_parameters()}
    with pytest.raises(ValueError, match="task.stage"):
        apply_stage(model, "decoder")


def test_generator_task_stage_option_and_init_from(tiny_synth, tmp_path):
    cfg = train_config(max_steps=1)
    task = GeneratorTask(PRESETS["tiny"], cfg, stage="top_decoder", top_layers=0)
    assert trainable(task.model) == trainable(_staged("cross_attention"))  # no top layers: cross-attention only

    torch.manual_seed(1)
    start = StariaSeq2Seq(PRESETS["tiny"])
    save_pretrained(start, PRESETS["tiny"], tmp_path / "start", extra={"task": "staria"})
    run_dir = tmp_path / "run"
    args = overrides(tiny_synth, run_dir, train__max_steps=2, train__lr=0.01, task__stage="cross_attention",
                     model__init_from=tmp_path / "start")
    train("staria", None, [a for a in args if a != "model.preset=tiny"])
    after, config = load_model(run_dir / "model", StariaConfig, StariaSeq2Seq)
    assert config == PRESETS["tiny"]  # taken from the init_from directory
    before, moved = start.state_dict(), trainable(_staged("cross_attention"))
    changed = {name for name, value in after.state_dict().items() if not torch.equal(value, before[name])}
    assert changed and changed <= moved, changed - moved  # frozen weights kept their init_from values

    with pytest.raises(CheckpointError, match="'staria' model"):
        train("classifier", None, overrides(tiny_synth, tmp_path / "bad", model__init_from=tmp_path / "start"))


def _staged(stage: str) -> StariaSeq2Seq:
    model = StariaSeq2Seq(PRESETS["tiny"])
    apply_stage(model, stage)
    return model


def test_export_cli_turns_a_run_checkpoint_into_a_half_precision_model(tiny_synth, tmp_path):
    run_dir = tmp_path / "run"
    base = overrides(tiny_synth, run_dir, train__max_steps=2, train__checkpoint_every_n_steps=2)
    assert CliRunner().invoke(app, ["music", "train", "staria", *base]).exit_code == 0
    out = tmp_path / "shipped"
    result = CliRunner().invoke(app, ["music", "export", "staria", *base, "--out", str(out), "--half"])
    assert result.exit_code == 0, result.output
    full, _ = load_model(run_dir / "model", StariaConfig, StariaSeq2Seq)
    half, cfg = load_model(out, StariaConfig, StariaSeq2Seq)
    state, _ = load_pretrained(out)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}
    assert half.decoder.to_logits.weight is half.decoder.token_emb.emb.weight  # still tied after loading
    for (name, a), b in zip(full.state_dict().items(), half.state_dict().values()):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3, msg=name)
    missing = CliRunner().invoke(app, ["music", "export", "staria", *base, "--checkpoint", str(tmp_path / "no.ckpt")])
    assert missing.exit_code == 1 and "not found" in missing.output  # a missing input fails (1)


def test_encoder_from_starts_the_generators_prompt_encoder_from_a_contrastive_encoder(tiny_synth, tmp_path):
    from cadenza.staria.models import SnippetEncoder

    torch.manual_seed(2)
    contrastive = SnippetEncoder(PRESETS["tiny"])
    save_pretrained(contrastive, PRESETS["tiny"], tmp_path / "encoder", extra={"task": "encoder"})
    args = overrides(tiny_synth, tmp_path / "run", train__max_steps=1, train__lr=0.0,
                     model__encoder_from=tmp_path / "encoder")
    train("staria", None, args)
    generator, _ = load_model(tmp_path / "run" / "model", StariaConfig, StariaSeq2Seq)
    for name, value in contrastive.encoder.state_dict().items():
        assert torch.equal(generator.encoder.state_dict()[name], value), name
    assert torch.equal(generator.decoder.token_emb.emb.weight, contrastive.encoder.token_emb.emb.weight)

    save_pretrained(StariaSeq2Seq(PRESETS["tiny"]), PRESETS["tiny"], tmp_path / "gen", extra={"task": "staria"})
    with pytest.raises(CheckpointError, match="exported 'encoder' model"):
        train("staria", None, overrides(tiny_synth, tmp_path / "bad", model__encoder_from=tmp_path / "gen"))
