"""`cadenza music tokenize`, `detokenize` and `render`: MIDI files to tokens, back, and to audio."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from cadenza.cli.common import err, fail


def tokenize(
    files: Annotated[list[Path], typer.Argument(help="MIDI files to tokenize.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSONL: one line per file.")],
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


def detokenize(
    tokens_jsonl: Annotated[Path, typer.Argument(help="JSONL from `cadenza music tokenize` (lines with 'tokens').")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Directory for the MIDI files.")],
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
        if isinstance(row, dict) and "error" in row:  # a file that failed to tokenize: reported by `tokenize`
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


def render(
    midi_files: Annotated[list[Path], typer.Argument(help="MIDI files to render.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Directory for NAME.wav files.")],
    sample_rate: Annotated[int, typer.Option(min=8000, help="Sample rate of the WAV files.")] = 44100,
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
