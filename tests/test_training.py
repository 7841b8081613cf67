"""Training harness and checkpoints: configs, step checkpoints, exact resume, 2-process DDP on CPU, safetensors.

A tiny MLP regression stands in for the real models. The DDP test runs this file as a script
(`python tests/test_training.py ddp RUN_DIR`), because Lightning starts the other DDP ranks by
re-running the command line, which pytest's own command line cannot survive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset

from cadenza.core.checkpoint import (
    CheckpointError,
    ConfigError,
    config_from_dict,
    export_lightning_checkpoint,
    load_model,
    load_pretrained,
    save_pretrained,
)
from cadenza.core import training
from cadenza.core.config import load_config
from cadenza.core.data_loader import ResumableDataLoader
from cadenza.core.training import (
    TrainConfig,
    config_dict,
    configure_adamw,
    configure_optimizers,
    cosine_schedule,
    fit,
    make_trainer,
    train_config,
)


class Regression(Dataset):
    """(index, x, y) with y a fixed nonlinear function of x; the index lets a test see who got what."""

    def __init__(self, n: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.sin(self.x).sum(1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return i, self.x[i], self.y[i]


class TinyData(L.LightningDataModule):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(Regression(), batch_size=self.cfg.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Regression(8, seed=1), batch_size=4)


class TinyRegressor(L.LightningModule):
    """2-layer MLP with dropout (so resume must restore the RNG too); records the batches it trained on."""

    def __init__(self, cfg: TrainConfig, crash_at_step: int | None = None) -> None:
        super().__init__()
        self.cfg, self.crash_at_step = cfg, crash_at_step
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
        self.seen: list[tuple[int, list[int]]] = []

    def training_step(self, batch, batch_idx):
        index, x, y = batch
        if self.global_step == self.crash_at_step:
            raise RuntimeError("simulated kill")
        self.seen.append((self.global_step, index.tolist()))
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        _, x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return configure_optimizers(self, self.cfg)


def tiny_cfg(**changes) -> TrainConfig:
    base = dict(max_steps=10, batch_size=8, warmup_steps=2, checkpoint_every_n_steps=5, keep_checkpoints=-1,
                val_every_n_steps=5, limit_val_batches=2, log_every_n_steps=1, threads=1)
    return train_config(base, **changes)


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False, crash_at_step: int | None = None) -> TinyRegressor:
    torch.manual_seed(0)  # same initial weights in every run
    module = TinyRegressor(cfg, crash_at_step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about workers and tiny epochs
        fit(module, TinyData(cfg), cfg, run_dir, resume=resume)
    return module


# ----------------------------------------------------------------------------- configs


def test_load_config_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  max_steps: 20\n  lr: 3e-4\nmodel:\n  dim: 128\n")
    defaults = {"train": config_dict(TrainConfig()), "model": {"dim": 64, "name": "tiny"}}
    overrides = ["train.max_steps=100", "model.dim=256", "train.precision=bf16-mixed", "train.threads=2",
                 "train.grad_clip=null", "train.limit_val_batches=0.5", "model.name=small"]
    cfg = load_config(path, overrides, defaults)
    assert cfg["model"] == {"dim": 256, "name": "small"}
    train = train_config(cfg["train"])
    assert (train.max_steps, train.lr, train.precision, train.threads) == (100, 3e-4, "bf16-mixed", 2)
    assert train.grad_clip is None and train.limit_val_batches == 0.5 and train.betas == (0.9, 0.95)
    assert defaults["model"]["dim"] == 64  # defaults are not modified

    json_path = tmp_path / "run.json"
    json_path.write_text(json.dumps({"train": {"lr": 0.001, "betas": [0.8, 0.99]}}))
    train = train_config(load_config(json_path, ["train.lr=1e-3"], defaults)["train"])
    assert train.lr == 1e-3 and train.betas == (0.8, 0.99)
    # Without defaults the file itself is the schema.
    assert load_config(path, ["model.dim=1"])["model"]["dim"] == 1


def test_a_config_extends_another(tmp_path):
    (tmp_path / "stage1.yaml").write_text("train:\n  max_steps: 20\n  lr: 3e-4\nmodel:\n  dim: 128\n")
    (tmp_path / "later").mkdir()
    stage2 = tmp_path / "later" / "stage2.yaml"
    stage2.write_text("extends: ../stage1.yaml\ntrain:\n  lr: 1e-4\n")
    defaults = {"train": config_dict(TrainConfig()), "model": {"dim": 64}}
    cfg = load_config(stage2, ["train.max_steps=30"], defaults)
    assert (cfg["train"]["max_steps"], cfg["train"]["lr"], cfg["model"]["dim"]) == (30, 1e-4, 128)
    (tmp_path / "stage1.yaml").write_text("extends: later/stage2.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(stage2, [], defaults)
    stage2.write_text("extends: ../missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(stage2, [], defaults)


def test_config_errors_name_the_key(tmp_path):
    defaults = {"train": config_dict(TrainConfig())}
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text("train:\n  max_step: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*'train.max_step'.*max_steps"):
        load_config(bad_file, [], defaults)
    with pytest.raises(ConfigError, match=r"'train.mx_steps'"):
        load_config(None, ["train.mx_steps=3"], defaults)
    with pytest.raises(ConfigError, match=r"'model'"):
        load_config(None, ["model.dim=3"], defaults)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.max_steps"], defaults)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml", [], defaults)
    with pytest.raises(ConfigError, match=r"train.max_steps.*'many'"):
        train_config({"max_steps": "many"})
    with pytest.raises(ConfigError, match=r"unknown key 'train.nope'"):
        train_config({"nope": 1})


# ----------------------------------------------------------------------------- trainer


def test_checkpoints_every_n_steps_and_exact_resume(tmp_path):
    cfg = tiny_cfg()
    reference = train(cfg, tmp_path / "ref")
    ckpts = tmp_path / "ref" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["last.ckpt", "step0000005.ckpt", "step0000010.ckpt"]
    assert torch.load(ckpts / "step0000005.ckpt", weights_only=False)["global_step"] == 5
    assert list((tmp_path / "ref" / "logs").glob("version_0/metrics.csv"))

    # Killed at step 7 (mid-epoch: 4 batches per epoch), then resumed from step 5's checkpoint.
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, tmp_path / "run", crash_at_step=7)
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)["global_step"] == 5
    resumed = train(cfg, tmp_path / "run", resume=True)
    assert resumed.seen[0][0] == 5 and resumed.trainer.global_step == 10
    assert resumed.seen == reference.seen[5:]  # the batches the killed run had not trained on, in order
    for name, weight in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], weight, rtol=0, atol=0, msg=name)
    optimizer = resumed.trainer.optimizers[0]
    assert optimizer.state_dict()["state"][0]["step"] == 10
    assert resumed.trainer.lr_scheduler_configs[0].scheduler.last_epoch == 10


def test_resume_without_checkpoint_starts_fresh_and_keeps_newest(tmp_path, capsys):
    cfg = tiny_cfg(max_steps=7, checkpoint_every_n_steps=2, keep_checkpoints=2)
    module = train(cfg, tmp_path, resume=True)
    assert "no checkpoint" in capsys.readouterr().err
    assert module.seen[0][0] == 0 and module.trainer.global_step == 7
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt", "step0000004.ckpt", "step0000006.ckpt"]
    # last.ckpt also holds the final step, which falls between two step checkpoints.
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 7

    out = export_lightning_checkpoint(tmp_path / "checkpoints/last.ckpt", tmp_path / "export", {"hidden": 16},
                                      prefix="net.", kind="TinyRegressor")
    state_dict, document = load_pretrained(out, kind="TinyRegressor")
    assert document["extra"]["global_step"] == 7 and document["config"] == {"hidden": 16}
    for name, weight in module.net.state_dict().items():
        assert torch.equal(state_dict[name], weight)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumable_dataloader_continues_mid_epoch(num_workers):
    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(list(range(20)), batch_size=4, shuffle=True, seed=3, num_workers=num_workers,
                                   persistent_workers=num_workers > 0)

    first = loader()
    first.sampler.set_epoch(1)
    epoch = [batch.tolist() for batch in first]
    assert sorted(i for batch in epoch for i in batch) == list(range(20)) and epoch != sorted(epoch)
    iterator = iter(first)
    seen = [next(iterator).tolist() for _ in range(2)]
    state = first.state_dict()
    assert state == {"yielded": 2, "epoch": 1}

    resumed = loader()
    resumed.load_state_dict(state)  # what Lightning does before iterating on resume
    assert len(resumed) == 5
    assert seen + [batch.tolist() for batch in resumed] == epoch
    assert [batch.tolist() for batch in resumed] == epoch  # the next pass is whole again


class TwoOptimizers(TinyRegressor):
    """Manual optimization with two optimizers, like a codec's generator/discriminator pair."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        self.automatic_optimization = False
        self.other = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        _, x, y = batch
        for optimizer, net in zip(self.optimizers(), (self.net, self.other)):
            loss = torch.nn.functional.mse_loss(net(x), y)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()

    def configure_optimizers(self):
        return [torch.optim.AdamW(self.net.parameters()), torch.optim.AdamW(self.other.parameters())]


def test_manual_optimization_checkpoints(tmp_path):
    cfg = tiny_cfg(max_steps=6, checkpoint_every_n_steps=2, grad_clip=1.0, accumulate=2)  # both ignored here
    module = TwoOptimizers(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(module, TinyData(cfg), cfg, tmp_path)
    assert module.trainer.global_step == 6  # two optimizer steps per batch
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt", "step0000006.ckpt"]


def test_make_trainer_precision_ddp_backend_and_slurm(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    with pytest.warns(UserWarning, match="needs a GPU"):
        trainer = make_trainer(tiny_cfg(precision="16-mixed", accelerator="cpu"), tmp_path)
    assert trainer.precision == "32-true"
    monkeypatch.setattr(training, "_cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="needs a GPU"):
        trainer = make_trainer(tiny_cfg(precision="bf16-mixed", accelerator="cpu"), tmp_path)
    assert trainer.precision == "32-true"
    monkeypatch.setattr(training, "_cpu_has_bf16", lambda: True)
    assert make_trainer(tiny_cfg(precision="bf16-mixed", accelerator="cpu"), tmp_path).precision == "bf16-mixed"

    trainer = make_trainer(tiny_cfg(accelerator="cpu", devices=2, strategy="ddp"), tmp_path)
    assert trainer.strategy.process_group_backend == "gloo" and trainer.num_devices == 2

    slurm = {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "train",
             "SLURM_NODELIST": "node[1-2]", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
             "SLURM_JOB_ID": "42"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    with pytest.warns(UserWarning, match="using devices=4 num_nodes=2"):
        trainer = make_trainer(tiny_cfg(accelerator="cpu"), tmp_path)
    assert type(trainer.strategy.cluster_environment).__name__ == "SLURMEnvironment"
    assert (trainer.num_devices, trainer.num_nodes, trainer.world_size, trainer.global_rank) == (4, 2, 8, 5)
    assert trainer.strategy.process_group_backend == "gloo"


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, __file__, "ddp", str(tmp_path)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [json.loads((tmp_path / f"seen_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [[step for step, _ in s] for s in seen] == [[0, 1, 2, 3]] * 2
    indices = [{i for _, batch in s for i in batch} for s in seen]
    assert not indices[0] & indices[1] and indices[0] | indices[1] == set(range(32))  # one epoch, split in two
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 4


def _ddp_main(run_dir: str) -> None:
    """Entry point of the DDP test: Lightning re-runs this command line for rank 1."""
    cfg = tiny_cfg(max_steps=4, batch_size=4, devices=2, strategy="ddp", accelerator="cpu", checkpoint_every_n_steps=2)
    module = train(cfg, Path(run_dir))
    Path(run_dir, f"seen_rank{module.global_rank}.json").write_text(json.dumps(module.seen))


# ----------------------------------------------------------------------------- optimizers


def test_cosine_schedule_and_adamw_groups():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = cosine_schedule(optimizer, warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[9] == pytest.approx(0.55) and lrs[14:] == pytest.approx([0.1] * 6)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))

    model = torch.nn.ModuleDict({"emb": torch.nn.Embedding(10, 8), "proj": torch.nn.Linear(8, 8),
                                 "norm": torch.nn.LayerNorm(8), "frozen": torch.nn.Linear(8, 8)})
    model["frozen"].requires_grad_(False)
    adamw = configure_adamw(model, tiny_cfg(weight_decay=0.1))
    decay, no_decay = adamw.param_groups
    assert decay["weight_decay"] == 0.1 and [p.shape for p in decay["params"]] == [(8, 8)]
    assert decay["params"][0] is model["proj"].weight
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 4  # emb, proj bias, norm w + b


# ----------------------------------------------------------------------------- save_pretrained


@dataclass
class TinyLMConfig:
    vocab: int = 11
    dim: int = 6
    sizes: tuple[int, ...] = (2, 3)
    name: str = "tiny"
    extra: dict = field(default_factory=dict)


class TinyLM(torch.nn.Module):
    def __init__(self, config: TinyLMConfig) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(config.vocab, config.dim)
        self.block = torch.nn.Linear(config.dim, config.dim)
        self.head = torch.nn.Linear(config.dim, config.vocab, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.register_buffer("scale", torch.arange(3.0))


def test_save_pretrained_round_trip_with_tied_weights(tmp_path):
    config = TinyLMConfig(dim=8, sizes=(4, 5), extra={"note": "x"})
    torch.manual_seed(0)
    model = TinyLM(config)
    save_pretrained(model, config, tmp_path / "lm", extra={"step": 3, "path": Path("a/b")})
    with safe_open(str(tmp_path / "lm/model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["block.bias", "block.weight", "emb.weight", "scale"]  # the tie stored once

    state_dict, document = load_pretrained(tmp_path / "lm", kind="TinyLMConfig")
    assert document["class"] == "TinyLMConfig" and document["extra"] == {"step": 3, "path": "a/b"}
    assert config_from_dict(TinyLMConfig, document["config"]) == config
    assert state_dict.keys() == model.state_dict().keys()
    loaded, loaded_config = load_model(tmp_path / "lm", TinyLMConfig, TinyLM)
    assert loaded_config == config and not loaded.training
    for name, weight in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], weight), name
    assert loaded.head.weight is loaded.emb.weight


def test_pretrained_errors_name_the_directory(tmp_path):
    config = TinyLMConfig()
    directory = save_pretrained(TinyLM(config), config, tmp_path / "lm")
    with pytest.raises(CheckpointError, match="expected 'OtherConfig'"):
        load_pretrained(directory, kind="OtherConfig")
    with pytest.raises(CheckpointError, match="nowhere.*not found"):
        load_pretrained(tmp_path / "nowhere")

    (directory / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(CheckpointError, match=r"lm/model.safetensors: not a readable safetensors file"):
        load_pretrained(directory)
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"lm: no model.safetensors"):
        load_pretrained(directory)
    (directory / "config.json").write_text("{ truncated")
    with pytest.raises(CheckpointError, match=r"config.json: corrupt JSON"):
        load_pretrained(directory)
    (directory / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"lm: no config.json"):
        load_pretrained(directory)
    with pytest.raises(CheckpointError, match="not found"):
        export_lightning_checkpoint(tmp_path / "missing.ckpt", tmp_path / "out", config)
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.ckpt: not a readable Lightning checkpoint"):
        export_lightning_checkpoint(tmp_path / "junk.ckpt", tmp_path / "out", config)


if __name__ == "__main__" and sys.argv[1:2] == ["ddp"]:
    _ddp_main(sys.argv[2])
