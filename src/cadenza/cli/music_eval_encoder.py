"""`cadenza music eval-encoder`: same-piece retrieval of the contrastive snippet encoder on held-out pieces."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from cadenza.cli.common import err, fail, output_file_option, write_json


def eval_encoder(
    model: Annotated[Path, typer.Argument(help="Exported encoder directory (RUN_DIR/model of `music train "
                                          "encoder`).")],
    corpus: Annotated[Path, typer.Option(help="Tokenized corpus of real music.")] = Path("data/music21"),
    split: Annotated[str, typer.Option(help="Corpus split: train, val or test.")] = "test",
    pieces: Annotated[int, typer.Option(min=2, help="Pieces to retrieve among (drawn from the split).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the pieces drawn and of the snippet places.")] = 0,
    augment: Annotated[bool, typer.Option("--augment", help="Augment each piece's second snippet once (pitch, "
                                          "velocity, tempo, as in training).")] = False,
    snippet_len: Annotated[int | None, typer.Option(min=1, help="Tokens per snippet (default: what the encoder "
                                                    "was trained with).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", callback=output_file_option,
                                             help="JSON report (default MODEL/encoder_eval_SPLIT.json).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Torch threads.")] = 1,
) -> None:
    """Two snippets from different places of each of N held-out pieces: how often a snippet finds its own
    piece's other snippet first (top-1) and among the first five (top-5). Prints a table, writes JSON."""
    import torch

    from cadenza.core.checkpoint import CheckpointError
    from cadenza.staria.encoder_eval import evaluate_encoder

    torch.set_num_threads(threads)
    try:
        report = evaluate_encoder(model, corpus, split=split, n_pieces=pieces, seed=seed, augment=augment,
                                  snippet_len=snippet_len)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    print_encoder_report(report, Console())
    path = write_json(report, out if out is not None else model / f"encoder_eval_{split}.json")
    err.print(f"report -> {path}")


def print_encoder_report(report: dict, console: Console) -> None:
    """Top-1 and top-5 retrieval beside chance, then whether issue 16's target is met."""
    n = report["n_pieces"]
    console.print(f"same-piece retrieval among {n} pieces of {report['corpus']} ({report['split']}): "
                  f"{2 * n} queries, each snippet against the other snippets; snippets of "
                  f"{report['mean_snippet_notes']:.0f} notes on average, "
                  f"{'the second one augmented' if report['augment'] else 'not augmented'}", highlight=False)
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("", "encoder", "chance"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row("top-1", f"{report['top1']:.1%}", f"{report['chance_top1']:.1%}")
    table.add_row("top-5", f"{report['top5']:.1%}", f"{report['chance_top5']:.1%}")
    table.add_row("mean rank", f"{report['mean_rank']:.1f}", f"{(n + 1) / 2:.1f}")
    console.print(table)
    target = report["target"]
    verdict = "[green]met[/green]" if target["met"] else "[red]not met[/red]"
    console.print(f"target: top-1 >= {target['top1']:.0%} among >= {target['n_pieces']} pieces {verdict}")
