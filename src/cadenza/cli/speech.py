"""`cadenza speech`: the audio tokenizer (encode/decode files, train, evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Speech: the audio tokenizer (codec) and, later, Higgs Audio generation.")
codec_app = typer.Typer(no_args_is_help=True, help="Encode wavs to codes (.npy) and decode codes back to 24 kHz wavs.")
app.add_typer(codec_app, name="codec")

ModelOption = Annotated[Path | None, typer.Option("--model", help="Codec directory (default: the shipped one).")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@app.command("train-codec")
def train_codec_cmd(
    config: Annotated[Path, typer.Option(help="YAML config (sections model, data, optim), e.g. configs/codec_small.yaml.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides, e.g. optim.max_steps=100.")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory (default runs/<config name>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR/checkpoints/last.ckpt.")] = False,
    progress: Annotated[bool, typer.Option(help="Show Lightning's progress bar.")] = True,
) -> None:
    """Train the audio tokenizer with Lightning; checkpoints and the exported model go to RUN_DIR."""
    from cadenza.higgs_audio.codec.training import load_train_config, train_codec

    try:
        cfg = load_train_config(config, overrides)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        _fail(str(exc))
    run_dir = run_dir or Path("runs") / config.stem
    try:
        export = train_codec(cfg, run_dir, resume=resume, progress=progress)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"trained codec exported to {export}")
