"""Lightning training harness shared by every model: run config, Trainer factory, resume, optimizers.

One `TrainConfig` drives a laptop run and a multi-node SLURM job alike:

- `load_config(path, overrides, defaults)` (core.config) reads YAML/JSON plus dotted `key=value` overrides,
  `train_config(section)` turns its `train` section into a `TrainConfig`;
- `make_trainer(cfg, run_dir)` builds the Trainer: step checkpoints + `last.ckpt` in `run_dir/checkpoints`,
  CSV (and TensorBoard, if installed) logs in `run_dir/logs`, DDP with gloo on CPU, SLURM picked up;
- `fit(module, datamodule, cfg, run_dir, resume)` seeds, sets threads and continues from `last.ckpt`;
  `ResumableDataLoader` (core.data_loader) resumes an interrupted epoch where it stopped;
- `configure_adamw` / `cosine_schedule` / `configure_optimizers` for `LightningModule.configure_optimizers`.

The config reader and the data loader live in their own modules (neither needs Lightning) and are
re-exported here, so `from cadenza.core.training import load_config, ResumableDataLoader` keeps working.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import re
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.strategies import DDPStrategy, Strategy

from cadenza.core.checkpoint import ConfigError, config_from_dict
from cadenza.core.config import load_config, parse_value
from cadenza.core.data_loader import EpochRandomSampler, ResumableDataLoader

__all__ = [
    "ConfigError", "TrainConfig", "load_config", "parse_value", "train_config", "config_dict", "make_trainer", "fit",
    "last_checkpoint", "StepCheckpoint", "ResumableDataLoader", "EpochRandomSampler", "cosine_schedule",
    "configure_adamw", "configure_optimizers",
]


@dataclass
class TrainConfig:
    """Everything about a run that is not the model or the data."""

    max_steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0  # None or 0 = off (manual-optimization modules clip themselves)
    accumulate: int = 1
    precision: str = "32-true"  # "bf16-mixed": GPUs, and CPUs with AVX512-BF16/AMX (else falls back to 32)
    accelerator: str = "auto"
    devices: int = 1  # processes per node; under SLURM taken from SLURM_NTASKS_PER_NODE
    num_nodes: int = 1  # under SLURM taken from SLURM_NNODES
    strategy: str = "auto"  # "auto" | "ddp" | "ddp_find_unused_parameters_true"
    checkpoint_every_n_steps: int = 500
    keep_checkpoints: int = 3  # newest step checkpoints kept besides last.ckpt; -1 = all, 0 = only last.ckpt
    val_every_n_steps: int = 500
    limit_val_batches: int | float = 1.0  # int = batches, float = fraction
    log_every_n_steps: int = 50
    num_workers: int = 0
    seed: int = 0
    run_dir: str = "runs/default"
    threads: int | None = None  # torch.set_num_threads per process; None = leave as is


# ----------------------------------------------------------------------------- config


def train_config(data: dict[str, Any] | None = None, **changes: Any) -> TrainConfig:
    """A `TrainConfig` from a dict (e.g. `load_config(...)["train"]`) plus keyword changes; checks keys and types."""
    return config_from_dict(TrainConfig, {**(data or {}), **changes}, where="train")


# ----------------------------------------------------------------------------- trainer


class _RngState(Callback):
    """Keep the global RNGs (torch, CUDA, numpy, random) in checkpoints: dropout and augmentation resume exactly."""

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def _slurm_layout(cfg: TrainConfig) -> tuple[int, int]:
    """(devices, num_nodes): under srun the processes already exist, so SLURM's numbers win over the config."""
    if not SLURMEnvironment.detect():
        return cfg.devices, cfg.num_nodes

    def number(name: str, default: int) -> int:
        match = re.match(r"\d+", os.environ.get(name, ""))  # SLURM may write "4(x2)"
        return int(match.group()) if match else default

    nodes = number("SLURM_NNODES", number("SLURM_JOB_NUM_NODES", 1))
    per_node = number("SLURM_NTASKS_PER_NODE", max(1, number("SLURM_NTASKS", 1) // nodes))
    if (per_node, nodes) != (cfg.devices, cfg.num_nodes):
        warnings.warn(
            f"SLURM job has {nodes} node(s) x {per_node} task(s); using devices={per_node} num_nodes={nodes}"
            f" instead of the configured devices={cfg.devices} num_nodes={cfg.num_nodes}",
            stacklevel=3,
        )
    return per_node, nodes


def _uses_cuda(cfg: TrainConfig) -> bool:
    return cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())


def _cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _precision(cfg: TrainConfig) -> str:
    """Reduced precision only where the hardware runs it fast: bf16 on GPUs and on CPUs with bf16 units
    (measured 1.6x faster classifier steps on an AVX512-BF16 CPU), 16-bit on GPUs; otherwise full 32-bit,
    with a warning."""
    precision = str(cfg.precision)
    if "16" not in precision:
        return precision
    if not _uses_cuda(cfg) or not torch.cuda.is_available():
        if precision.startswith("bf16") and _cpu_has_bf16():
            return precision
        warnings.warn(f"precision {precision!r} needs a GPU or a CPU with bf16 units; training in 32-true",
                      stacklevel=3)
        return "32-true"
    if precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU has no bf16; training in 16-mixed", stacklevel=3)
        return "16-mixed"
    return precision


def _strategy(cfg: TrainConfig, world_size: int) -> str | Strategy:
    """DDP whenever more than one process trains; gloo unless on CUDA (NCCL)."""
    name = cfg.strategy
    if name == "auto" and world_size > 1:
        name = "ddp"
    if name.startswith("ddp") and not name.startswith("ddp_spawn") and not name.startswith("ddp_notebook"):
        return DDPStrategy(
            process_group_backend="nccl" if _uses_cuda(cfg) else "gloo",
            find_unused_parameters=name.endswith("find_unused_parameters_true"),
        )
    return name


class StepCheckpoint(Callback):
    """Every N optimizer steps write `stepNNNNNNN.ckpt` and refresh `last.ckpt`; keep the newest `keep` step files.

    Also writes `last.ckpt` when training ends between two step checkpoints, so no finished step is lost.
    (Lightning's ModelCheckpoint defers or shifts step saves when it monitors a metric, and warns on every
    save under manual optimization; this one does only what its name says.)
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int, keep: int = -1) -> None:
        self.dirpath, self.every_n_steps, self.keep = Path(dirpath), every_n_steps, keep
        self._last_saved = -1

    @property
    def last_path(self) -> Path:
        """Where the newest checkpoint of the run always is."""
        return self.dirpath / "last.ckpt"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_saved = trainer.global_step  # a resumed run already has this step on disk

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        # Floor division: under manual optimization one batch may advance global_step by several.
        if self.every_n_steps > 0 and step // self.every_n_steps > self._last_saved // self.every_n_steps:
            self.save(trainer, with_step_file=self.keep != 0)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_saved:
            self.save(trainer, with_step_file=False)

    def save(self, trainer: L.Trainer, with_step_file: bool = True) -> None:
        """Write the checkpoint (all ranks must call this: saving is collective under DDP)."""
        step = trainer.global_step
        self.dirpath.mkdir(parents=True, exist_ok=True)
        tmp = self.dirpath / f".step{step:07d}.ckpt.tmp"
        trainer.save_checkpoint(tmp, weights_only=False)
        self._last_saved = step
        if not trainer.is_global_zero:
            return
        # Write once, then link: last.ckpt is replaced atomically, so a kill mid-save never leaves it corrupt.
        if with_step_file:
            step_file = self.dirpath / f"step{step:07d}.ckpt"
            os.replace(tmp, step_file)
            try:
                os.link(step_file, tmp)
            except OSError:  # file systems without hard links
                shutil.copyfile(step_file, tmp)
        os.replace(tmp, self.last_path)
        if self.keep > 0:
            files = sorted(self.dirpath.glob("step*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
            for old in files[: -self.keep]:
                old.unlink(missing_ok=True)


def make_trainer(
    cfg: TrainConfig,
    run_dir: str | Path | None = None,
    callbacks: list[Callback] | None = None,
    automatic_optimization: bool = True,
) -> L.Trainer:
    """A Trainer for `cfg`: step checkpoints + last.ckpt, CSV/TensorBoard logs, DDP/SLURM, precision fallback."""
    run_dir = Path(run_dir if run_dir is not None else cfg.run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    devices, num_nodes = _slurm_layout(cfg)
    checkpoint = StepCheckpoint(run_dir / "checkpoints", cfg.checkpoint_every_n_steps, cfg.keep_checkpoints)
    loggers: list[Logger] = [CSVLogger(run_dir, name="logs", version=None)]
    if importlib.util.find_spec("tensorboard") is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=None))
    # A progress bar redrawn every step floods a non-interactive log (CI, SLURM output files).
    progress = TQDMProgressBar(refresh_rate=1 if sys.stderr.isatty() else 50)
    clip = cfg.grad_clip if (cfg.grad_clip and automatic_optimization) else None
    return L.Trainer(
        default_root_dir=run_dir,
        max_steps=cfg.max_steps,
        max_epochs=-1,
        accelerator=cfg.accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=_strategy(cfg, devices * num_nodes),
        precision=_precision(cfg),
        gradient_clip_val=clip,
        accumulate_grad_batches=cfg.accumulate if automatic_optimization else 1,
        # Validate every N optimizer steps across epoch boundaries (the interval counts batches).
        val_check_interval=cfg.val_every_n_steps * (cfg.accumulate if automatic_optimization else 1),
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.limit_val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.log_every_n_steps,
        logger=loggers,
        callbacks=[
            checkpoint, _RngState(), progress, LearningRateMonitor("step"),
            *(callbacks or []),
        ],
        # Lightning adds its own ModelCheckpoint unless told not to; callers may still pass one.
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks or []),
        enable_progress_bar=True,
        enable_model_summary=True,
    )


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint a resumed run continues from: the newest of `checkpoints/last.ckpt` and SLURM's `hpc_ckpt_*`."""
    run_dir = Path(run_dir)
    candidates = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    existing = [p for p in candidates if p.is_file()]
    return max(existing, key=lambda p: p.stat().st_mtime) if existing else None


def fit(
    module: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    cfg: TrainConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: list[Callback] | None = None,
) -> L.Trainer:
    """Seed, build the Trainer and train; with `resume`, continue from the run's last checkpoint if it has one."""
    run_dir = Path(run_dir if run_dir is not None else cfg.run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer = make_trainer(cfg, run_dir, callbacks, automatic_optimization=module.automatic_optimization)
    ckpt = last_checkpoint(run_dir)
    if resume and ckpt is None:
        _say(trainer, f"--resume: no checkpoint in {run_dir / 'checkpoints'}, starting fresh")
    elif resume:
        _say(trainer, f"resuming from {ckpt}")
    elif ckpt is not None:
        _say(trainer, f"{run_dir} already has checkpoints; starting fresh and overwriting them (use --resume to continue)")
    # weights_only=False: this is our own run's resume state, and hyper-parameters may be any object.
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if resume and ckpt else None, weights_only=False)
    return trainer


def _say(trainer: L.Trainer, message: str) -> None:
    if trainer.is_global_zero:
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- optimizers


def cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr, cosine decay to `min_lr_ratio` x base at `max_steps`, flat after."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def configure_adamw(module: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on biases, norms (any 1-d tensor) and embeddings."""
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        is_embedding = id(param) in embeddings or name.rsplit(".", 1)[-1] in ("emb", "embedding", "pos_emb")
        (no_decay if param.ndim < 2 or is_embedding else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # Fused AdamW only exists for CUDA tensors.
    fused = torch.cuda.is_available() and all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def configure_optimizers(module: torch.nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """`LightningModule.configure_optimizers` return value: AdamW + per-step warm-up/cosine schedule."""
    optimizer = configure_adamw(module, cfg)
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr / cfg.lr if cfg.lr else 0.0)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """`cfg` as a plain dict (for `load_config(defaults=...)` and for logging hyper-parameters)."""
    return asdict(cfg)
