"""`cadenza music eval-classifier`: token accuracy and form exact match of a section classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

err = Console(stderr=True)


def eval_classifier(
    model: Path = typer.Argument(..., help="Exported classifier directory (RUN_DIR/model)."),
    corpus: Path = typer.Argument(..., help="Synthetic corpus directory (pieces with section tokens)."),
    split: str = typer.Option("test", "--split", help="Corpus split: train, val or test."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most this many pieces, spread over the split."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="JSON report (default MODEL/classifier_eval_SPLIT.json)."),
    switch_cost: Optional[float] = typer.Option(None, "--switch-cost", help="Cost per section change when decoding "
                                                "letters (0: token-wise argmax; default: forms.SWITCH_COST)."),
    threads: int = typer.Option(1, help="Torch threads."),
) -> None:
    """Per-token accuracy, form exact match (form head and per-token labels), per-form breakdown and
    letter confusion of a section classifier on held-out synthetic pieces. Prints a table, writes JSON."""
    import torch

    from cadenza.core.checkpoint import CheckpointError
    from cadenza.staria.classifier_eval import evaluate_classifier, print_classifier_report, write_classifier_report

    if limit is not None and limit < 1:
        err.print("[red]error[/red] --limit must be >= 1")
        raise typer.Exit(2)
    torch.set_num_threads(threads)
    try:
        decoding = {} if switch_cost is None else {"switch_cost": switch_cost}
        report = evaluate_classifier(model, corpus, split=split, limit=limit, **decoding)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        err.print(f"[red]error[/red] {e}")
        raise typer.Exit(2)
    print_classifier_report(report, Console())
    path = write_classifier_report(report, out if out is not None else model / f"classifier_eval_{split}.json")
    err.print(f"report -> {path}")
