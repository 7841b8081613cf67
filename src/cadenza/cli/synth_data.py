"""`cadenza data synth`: synthetic structured pieces stitched from a real corpus."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

err = Console(stderr=True)


def synth(
    corpus: Path = typer.Argument(..., help="Real corpus directory (`cadenza data music21` or `ingest`)."),
    out: Path = typer.Argument(..., help="Output corpus directory for the synthetic pieces."),
    per_form: int = typer.Option(100, "--per-form", help="Train pieces per form (val/test get ~1/18 of it)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same corpus and seed give the same pieces."),
    min_tokens: int = typer.Option(1024, help="Shortest target piece length in tokens."),
    max_tokens: int = typer.Option(4095, help="Longest target piece length in tokens."),
) -> None:
    """Stitch synthetic pieces of every form (AB, ABA, ABAC, ...) with a section label on every token.

    Each letter takes the opening of its own real source; repeated letters replay it (maybe varied).

    Val/test pieces use only val/test sources, so evaluation is on unseen material.
    """
    from cadenza.staria.synthetic import synthesize

    if not 64 <= min_tokens <= max_tokens:
        err.print(f"[red]error[/red] need 64 <= --min-tokens <= --max-tokens, got {min_tokens}, {max_tokens}")
        raise typer.Exit(2)
    if per_form < 1:
        err.print(f"[red]error[/red] --per-form must be >= 1, got {per_form}")
        raise typer.Exit(2)
    try:
        counts = synthesize(corpus, out, per_form=per_form, seed=seed,
                            min_tokens=min_tokens, max_tokens=max_tokens)
    except (FileNotFoundError, ValueError) as e:
        err.print(f"[red]error[/red] {e}")
        raise typer.Exit(1)
    report = out / "report.jsonl"
    problems = sum(1 for line in report.read_text().splitlines() if line.strip()) if report.exists() else 0
    err.print(f"{sum(counts.values())} synthetic pieces -> {out} "
              f"({', '.join(f'{k} {v}' for k, v in counts.items())})"
              + (f"; {problems} notes in {report}" if problems else ""))
