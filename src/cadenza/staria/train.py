"""`cadenza music train TASK --config FILE key=value ...`: one entry point for the four Staria models.

A config has four sections: `model` (a preset name plus any StariaConfig field), `data` (corpora and
sequence lengths), `task` (the LightningModule's own knobs) and `train` (core.training.TrainConfig).
When training ends the model is exported to `RUN_DIR/model` (safetensors + config.json); `export` does
the same for any checkpoint of a run that is still going or was stopped.
`model.init_from=DIR` starts from the weights of such an export (its config is the base; fields set in
the `model` section change it, e.g. dropout), which is how staged fine-tuning continues a model.
`model.encoder_from=DIR` starts a generator's prompt encoder (and the token table it shares with the decoder)
from an exported contrastive snippet encoder (`train encoder`), the seed's encoder phase.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from cadenza.core.checkpoint import (
    CheckpointError, config_from_dict, export_lightning_checkpoint, load_pretrained, save_pretrained,
)
from cadenza.core.config import load_config
from cadenza.core.training import TrainConfig, fit, train_config
from cadenza.staria.datamodule import StariaDataModule
from cadenza.staria.models import PRESETS, StariaConfig
from cadenza.staria.tasks import TASKS

DATA_TASK = {"classifier": "classification", "encoder": "contrastive", "decoder": "generative",
             "staria": "generative"}
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "classifier": {"form_weight": 0.2},
    "encoder": {"temperature": 0.1},
    "decoder": {},
    "staria": {"prompt_dropout": 0.1, "stage": "all", "top_layers": 4},
}


def default_config(task: str) -> dict[str, Any]:
    """Every key a config for `task` may set, with its default (unset model fields come from the preset)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return {
        "model": {"preset": "small", "init_from": None, "encoder_from": None, **{f.name: None for f in fields(StariaConfig)}},
        "data": {"corpora": [], "max_seq_len": 1024, "snippet_len": 256, "min_snippet_len": None, "form_token": True,
                 "samples_per_epoch": None, "max_pitch_shift": 5},
        "task": dict(TASK_DEFAULTS[task]),
        "train": asdict(TrainConfig()),
    }


def model_config(section: dict[str, Any]) -> StariaConfig:
    """The preset named in `section` (or the config of `init_from`) with the fields the section sets."""
    section = dict(section)
    preset = section.pop("preset")
    init_from = section.pop("init_from", None)
    section.pop("encoder_from", None)
    if init_from is not None:
        base = config_from_dict(StariaConfig, load_pretrained(init_from, kind="StariaConfig")[1]["config"])
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"unknown model preset {preset!r}; expected one of {', '.join(PRESETS)}")
    return base.with_overrides(**{k: v for k, v in section.items() if v is not None})


def init_weights(model: Any, directory: str | Path, task: str) -> None:
    """Load the weights of an exported model directory into `model`. Strict (the shapes must fit), except
    that a generator may gain section positions or snippet hints its source lacks: they start as no-ops."""
    state_dict, document = load_pretrained(directory, kind="StariaConfig")
    exported_task = document["extra"].get("task")
    if exported_task is not None and exported_task != task:
        raise CheckpointError(f"{directory}: holds a '{exported_task}' model; cannot initialise '{task}' from it")
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if not k.startswith(("section_position.", "snippet_hint."))]
        if missing or unexpected:
            raise RuntimeError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    except RuntimeError as e:
        raise CheckpointError(f"{directory}: weights do not fit this {task} model ({e})") from e


def init_encoder(model: Any, directory: str | Path, task: str) -> None:
    """Load a contrastive snippet encoder's transformer (not its projection head) into a generator's prompt
    encoder. Its token table is the generator's only one, so the decoder's input and output embeddings start
    from it too."""
    state_dict, document = load_pretrained(directory, kind="StariaConfig")
    if task != "staria" or document["extra"].get("task") != "encoder":
        raise CheckpointError(f"{directory}: model.encoder_from needs an exported 'encoder' model and the "
                              f"'staria' task (got '{document['extra'].get('task')}' for '{task}')")
    encoder = {name.removeprefix("encoder."): value for name, value in state_dict.items()
               if name.startswith("encoder.")}
    try:
        model.encoder.load_state_dict(encoder, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{directory}: its encoder does not fit this generator's ({e})") from e


def train(task: str, config_path: str | Path | None = None, overrides: list[str] = (),
          resume: bool = False, **train_changes: Any) -> Path:
    """Train one Staria model; returns the export directory. `train_changes` override TrainConfig fields."""
    cfg = load_config(config_path, list(overrides), defaults=default_config(task))
    model_cfg = model_config(cfg["model"])
    train_cfg = train_config(cfg["train"], **{k: v for k, v in train_changes.items() if v is not None})
    data = cfg["data"]
    if not data["corpora"]:
        raise ValueError("data.corpora is empty: give corpus directories in the config or as an override, "
                         "e.g. 'data.corpora=[data/synth]'")
    datamodule = StariaDataModule(
        data["corpora"], task=DATA_TASK[task], batch_size=train_cfg.batch_size,
        max_seq_len=min(data["max_seq_len"], model_cfg.max_seq_len), prompt=DATA_TASK[task] == "generative",
        form_token=data["form_token"], snippet_len=data["snippet_len"], num_workers=train_cfg.num_workers,
        samples_per_epoch=data["samples_per_epoch"], min_snippet_len=data["min_snippet_len"],
        max_pitch_shift=data["max_pitch_shift"],
    )
    module = TASKS[task](model_cfg, train_cfg, **cfg["task"])
    if cfg["model"]["init_from"] is not None:
        init_weights(module.model, cfg["model"]["init_from"], task)
    if cfg["model"]["encoder_from"] is not None:
        init_encoder(module.model, cfg["model"]["encoder_from"], task)
    run_dir = Path(train_cfg.run_dir)
    trainer = fit(module, datamodule, train_cfg, run_dir, resume=resume)
    export = run_dir / "model"
    if trainer.is_global_zero:
        save_pretrained(module.model, model_cfg, export,
                        extra={"task": task, "step": trainer.global_step, "config": cfg})
    return export


def export(task: str, config_path: str | Path | None = None, overrides: list[str] = (),
           checkpoint: str | Path | None = None, out: str | Path | None = None, half: bool = False) -> Path:
    """Export a Lightning checkpoint of a `task` run (default RUN_DIR/checkpoints/last.ckpt) like the end of
    `train` does (default to RUN_DIR/model); `half` stores float16 weights (loading casts them back)."""
    cfg = load_config(config_path, list(overrides), defaults=default_config(task))
    run_dir = Path(cfg["train"]["run_dir"])
    checkpoint = Path(checkpoint) if checkpoint is not None else run_dir / "checkpoints" / "last.ckpt"
    out = Path(out) if out is not None else run_dir / "model"
    return export_lightning_checkpoint(checkpoint, out, model_config(cfg["model"]), prefix="model.",
                                       extra={"task": task, "config": cfg}, kind="StariaConfig", half=half)
