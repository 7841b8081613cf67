"""`cadenza music ...` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from tqdm import tqdm

from cadenza.cli.music_common import err, fail
from cadenza.cli.music_eval_classifier import eval_classifier
from cadenza.cli.music_evaluate import evaluate
from cadenza.cli.music_generate import generate

app = typer.Typer(no_args_is_help=True)
app.command("generate")(generate)
app.command("evaluate")(evaluate)
app.command("eval-classifier")(eval_classifier)


@app.command()
def tokenize(
    files: List[Path] = typer.Argument(..., help="MIDI files to tokenize."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL: one line per file."),
) -> None:
    """Tokenize MIDI files into JSONL lines {"path", "tokens"} or {"path", "error"}.

    Every file is tried; the exit status is 1 if any failed.
    """
    from cadenza.staria import MidiError, StariaTokenizer

    tok = StariaTokenizer()
    failed = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for path in tqdm(files, desc="tokenize", unit="file", disable=len(files) < 10):
            try:
                row = {"path": str(path), "tokens": tok.tokenize(path)}
            except MidiError as e:
                failed += 1
                row = {"path": str(path), "error": str(e)}
                err.print(f"[red]error[/red] {e}")
            f.write(json.dumps(row) + "\n")
    err.print(f"{len(files) - failed} tokenized, {failed} failed -> {out}")
    raise typer.Exit(1 if failed else 0)


@app.command()
def detokenize(
    tokens_jsonl: Path = typer.Argument(..., help="JSONL from `cadenza music tokenize` (lines with 'tokens')."),
    out_dir: Path = typer.Option(..., "--out-dir", "-o", help="Directory for the MIDI files."),
) -> None:
    """Turn token lines back into MIDI files (NAME.mid per line; invalid tokens dropped and counted)."""
    from cadenza.staria import StariaTokenizer

    try:
        lines = tokens_jsonl.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"{tokens_jsonl}: cannot read token lines ({getattr(e, 'strerror', None) or e})")
    tok = StariaTokenizer()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            skipped += 1
            err.print(f"[red]skip[/red] {tokens_jsonl}:{number}: not JSON ({e})")
            continue
        if "error" in row:  # a file that failed to tokenize: already reported by `tokenize`
            err.print(f"[yellow]skip[/yellow] {tokens_jsonl}:{number}: {row['error']}")
            continue
        tokens = row.get("tokens") if isinstance(row, dict) else None
        if not isinstance(tokens, list):
            skipped += 1
            err.print(f"[red]skip[/red] {tokens_jsonl}:{number}: no 'tokens' list")
            continue
        name = Path(row.get("path") or f"piece_{number}").stem
        score, dropped = tok.detokenize(tokens, return_dropped=True)
        score.dump_midi(str(out_dir / f"{name}.mid"))
        written += 1
        if dropped:
            err.print(f"{name}: dropped {dropped} invalid tokens")
    err.print(f"{written} MIDI files written to {out_dir}, {skipped} lines skipped")
    raise typer.Exit(1 if skipped else 0)


@app.command()
def render(
    midi_files: List[Path] = typer.Argument(..., help="MIDI files to render."),
    out_dir: Path = typer.Option(..., "--out-dir", "-o", help="Directory for NAME.wav files."),
    sample_rate: int = typer.Option(44100, help="Sample rate of the WAV files."),
) -> None:
    """Render MIDI files to WAV with fluidsynth and a General MIDI soundfont."""
    from cadenza.staria import MidiError
    from cadenza.staria.midi import render_wav

    failed = 0
    for path in midi_files:
        try:
            wav = render_wav(path, out_dir / f"{path.stem}.wav", sample_rate=sample_rate)
            err.print(f"{path} -> {wav}")
        except (MidiError, RuntimeError) as e:
            failed += 1
            err.print(f"[red]error[/red] {e}")
    raise typer.Exit(1 if failed else 0)


@app.command(context_settings={"allow_extra_args": False})
def train(
    task: str = typer.Argument(..., help="classifier | encoder | decoder (decoder-only baseline) | staria"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides: train.max_steps=100 model.dim=128"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML/JSON config (see configs/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/checkpoints/last.ckpt."),
    devices: Optional[int] = typer.Option(None, help="Processes per node (DDP when > 1)."),
    num_nodes: Optional[int] = typer.Option(None, help="Nodes (SLURM sets this for you)."),
    strategy: Optional[str] = typer.Option(None, help="auto | ddp"),
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


@app.command()
def export(
    task: str = typer.Argument(..., help="classifier | encoder | decoder | staria"),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides, as for train."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="The run's YAML/JSON config."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Default: RUN_DIR/checkpoints/last.ckpt."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Export directory (default RUN_DIR/model)."),
    half: bool = typer.Option(False, "--half", help="Store weights as float16 (half the size; for shipping)."),
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


from cadenza.cli.music_wake_sleep import wake_sleep  # noqa: E402

app.command("wake-sleep")(wake_sleep)
