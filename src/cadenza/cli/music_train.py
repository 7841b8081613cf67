"""`cadenza music train` and `export`: Staria models with Lightning, and a run's checkpoint as a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cadenza.cli.common import err, fail


def train(
    task: Annotated[str, typer.Argument(help="classifier | encoder | decoder (decoder-only baseline) | staria")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Config overrides: train.max_steps=100 "
                                                          "model.dim=128")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML/JSON config (see configs/).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR/checkpoints/last.ckpt.")] = False,
    devices: Annotated[int | None, typer.Option(min=1, help="Processes per node (DDP when > 1).")] = None,
    num_nodes: Annotated[int | None, typer.Option(min=1, help="Nodes (SLURM sets this for you).")] = None,
    strategy: Annotated[str | None, typer.Option(help="auto | ddp")] = None,
) -> None:
    """Train a Staria model with Lightning; checkpoints every N steps, --resume continues a killed run.

    The trained weights are exported to RUN_DIR/model (safetensors + config.json).
    """
    from cadenza.core.checkpoint import CheckpointError
    from cadenza.staria.train import train as run

    try:
        export = run(task, config, overrides or [], resume=resume, devices=devices, num_nodes=num_nodes,
                     strategy=strategy)
    except (CheckpointError, FileNotFoundError) as e:
        fail(str(e))
    except ValueError as e:  # a config or override that does not fit (ConfigError is one)
        raise typer.BadParameter(str(e)) from e
    err.print(f"model exported to {export}")


def export(
    task: Annotated[str, typer.Argument(help="classifier | encoder | decoder | staria")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Config overrides, as for train.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="The run's YAML/JSON config.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Default: RUN_DIR/checkpoints/last.ckpt.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Export directory (default RUN_DIR/model).")] = None,
    half: Annotated[bool, typer.Option("--half", help="Store weights as float16 (half the size; for "
                                       "shipping).")] = False,
) -> None:
    """Export a checkpoint of a training run (still going or stopped) as a model directory."""
    from cadenza.core.checkpoint import CheckpointError
    from cadenza.staria.train import export as run

    try:
        path = run(task, config, overrides or [], checkpoint=checkpoint, out=out, half=half)
    except (CheckpointError, FileNotFoundError) as e:
        fail(str(e))
    except ValueError as e:  # a config or override that does not fit (ConfigError is one)
        raise typer.BadParameter(str(e)) from e
    err.print(f"model exported to {path}")
