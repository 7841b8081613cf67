"""`cadenza music eval-classifier`: token accuracy and form exact match of a section classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from cadenza.cli.common import err, fail, write_json


def eval_classifier(
    model: Annotated[Path, typer.Argument(help="Exported classifier directory (RUN_DIR/model).")],
    corpus: Annotated[Path, typer.Argument(help="Synthetic corpus directory (pieces with section tokens).")],
    split: Annotated[str, typer.Option(help="Corpus split: train, val or test.")] = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many pieces, spread over the split.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSON report (default "
                                             "MODEL/classifier_eval_SPLIT.json).")] = None,
    switch_cost: Annotated[float | None, typer.Option(min=0, help="Cost per section change when decoding letters "
                                                      "(0: token-wise argmax; default: forms.SWITCH_COST).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Torch threads.")] = 1,
) -> None:
    """Per-token accuracy, form exact match (form head and per-token labels), per-form breakdown and
    letter confusion of a section classifier on held-out synthetic pieces. Prints a table, writes JSON."""
    import torch

    from cadenza.core.checkpoint import CheckpointError
    from cadenza.staria.classifier_eval import evaluate_classifier

    torch.set_num_threads(threads)
    try:
        decoding = {} if switch_cost is None else {"switch_cost": switch_cost}
        report = evaluate_classifier(model, corpus, split=split, limit=limit, **decoding)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    print_classifier_report(report, Console())
    path = write_json(report, out if out is not None else model / f"classifier_eval_{split}.json")
    err.print(f"report -> {path}")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def print_classifier_report(report: dict, console: Console) -> None:
    """A table per form (and overall), then the letter confusion counts."""
    table = Table(title=f"section classifier on {report['corpus']} ({report['split']})", box=box.SIMPLE_HEAD,
                  caption="tokens: per-token accuracy (micro; macro = mean over pieces); form head: argmax == "
                          "form; labels: form_from_labels(letters) == condensed form; ceiling: same from the "
                          "true letters")
    for column in ("form", "pieces", "tokens", "macro", "form head", "labels", "ceiling"):
        table.add_column(column, justify="left" if column == "form" else "right")
    rows = [(form, s) for form, s in report["per_form"].items()] + [("all", report)]
    for k, (form, s) in enumerate(rows):
        style = "bold" if form == "all" else None
        table.add_row(form, str(s["n_pieces"]), _pct(s["token_accuracy"]), _pct(s["token_accuracy_macro"]),
                      _pct(s["form_head_exact_match"]), _pct(s["label_form_exact_match"]),
                      _pct(s["label_form_ceiling"]), style=style, end_section=k == len(rows) - 2)
    console.print(table)
    confusion = Table(title="letters (rows true, columns predicted)", box=box.SIMPLE_HEAD)
    confusion.add_column("")
    for letter in report["confusion"]["letters"]:
        confusion.add_column(letter, justify="right")
    for letter, counts in zip(report["confusion"]["letters"], report["confusion"]["counts"]):
        confusion.add_row(letter, *map(str, counts))
    console.print(confusion)
    t = report["targets"]
    mark = lambda ok: "[green]met[/green]" if ok else "[red]not met[/red]"  # noqa: E731
    console.print(f"targets: token accuracy >= {t['token_accuracy']:.0%} {mark(t['token_accuracy_met'])}; "
                  f"form exact match >= {t['form_exact_match']:.0%}: form head {mark(t['form_head_met'])}, "
                  f"labels {mark(t['label_form_met'])}")
    if report.get("n_too_long"):
        console.print(f"{report['n_too_long']} pieces longer than {report['max_seq_len']} tokens: windowed "
                      "letters, no form head")
