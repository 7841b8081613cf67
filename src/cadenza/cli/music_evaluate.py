"""`cadenza music evaluate`: form adherence and music statistics of a folder of MIDI files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

err = Console(stderr=True)


def evaluate(
    directory: Path = typer.Argument(..., help="Folder of MIDI files (searched recursively)."),
    form: Optional[str] = typer.Option(None, "--form", "-f", help="Requested form, e.g. ABA: the markers must spell it."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="JSON report (default DIRECTORY/evaluation.json)."),
) -> None:
    """Judge whether each piece's sections follow its section letters, and report music statistics.

    A piece's form is found when every pair of same-letter sections shares material and every pair of
    different-letter sections does not (piano roll, melodic n-grams, pitch-class, interval and rhythm
    histograms, note density; transposition-aware). Prints a table and writes a JSON report; files that
    are not MIDI are reported and skipped (exit status 1 if any was skipped).
    """
    from cadenza.staria.evaluate import evaluate_dir, print_report, write_report
    from cadenza.staria.forms import validate_form

    if form is not None:
        try:
            validate_form(form)
        except ValueError as e:
            err.print(f"[red]error[/red] --form: {e}")
            raise typer.Exit(2)
    try:
        report = evaluate_dir(directory, form, progress=True)
    except FileNotFoundError as e:
        err.print(f"[red]error[/red] {e}")
        raise typer.Exit(2)
    print_report(report, Console())
    path = write_report(report, out or directory / "evaluation.json")
    err.print(f"report -> {path}")
    if report["n_evaluated"] == 0:
        err.print(f"[red]error[/red] {directory}: no MIDI file could be evaluated")
        raise typer.Exit(1)
    raise typer.Exit(1 if report["skipped"] else 0)
