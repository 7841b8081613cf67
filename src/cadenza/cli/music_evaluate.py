"""`cadenza music evaluate`: form adherence and music statistics of a folder of MIDI files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from cadenza.cli.common import err, fail, form_option, write_json


def evaluate(
    directory: Annotated[Path, typer.Argument(help="Folder of MIDI files (searched recursively).")],
    form: Annotated[str | None, typer.Option("--form", "-f", callback=form_option,
                                             help="Requested form, e.g. ABA: the markers must spell it.")] = None,
    prompt: Annotated[Path | None, typer.Option(help="The prompt MIDI the pieces were generated from (markers A, "
                                                "B, ...): also report how many sections follow their snippet.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSON report (default "
                                             "DIRECTORY/evaluation.json).")] = None,
    classifier: Annotated[Path | None, typer.Option(help="Section classifier export: also report the form it hears "
                                                    "in each piece (markers removed).")] = None,
    model: Annotated[Path | None, typer.Option(help="Generator export for --heldout perplexity.")] = None,
    heldout: Annotated[Path | None, typer.Option(help="Corpus (e.g. data/music21) whose test split gives the "
                                                 "held-out real pieces for the model's perplexity.")] = None,
    heldout_limit: Annotated[int, typer.Option(min=1, help="At most this many held-out pieces.")] = 100,
) -> None:
    """Judge whether each piece's sections follow its section letters, and report music statistics.

    A piece's form is found when every pair of same-letter sections shares material and every pair of
    different-letter sections does not (piano roll, melodic n-grams, pitch-class, interval and rhythm
    histograms, note density; transposition-aware). Prints a table and writes a JSON report; files that
    are not MIDI are reported and skipped (exit status 1 if any was skipped). With --classifier, also
    the form the section classifier hears; with --prompt, how many sections are closer to their own
    snippet than to every other (pitch classes, register, intervals; chance 1 / snippets); with --model
    and --heldout, the generator's perplexity on held-out real pieces.
    """
    from cadenza.core.checkpoint import CheckpointError
    from cadenza.staria.generate import StariaGenerator
    from cadenza.staria.labeller import SectionLabeller
    from cadenza.staria.piece_eval import evaluate_dir, heldout_perplexity

    if (model is None) != (heldout is None):
        raise typer.BadParameter("--model and --heldout go together")
    try:
        classifier_fn = None
        if classifier is not None:
            labeller = SectionLabeller.from_pretrained(classifier)
            classifier_fn = lambda ids: labeller([ids])[0]  # noqa: E731
        report = evaluate_dir(directory, form, classifier_fn=classifier_fn, progress=True, prompt=prompt)
        if model is not None:
            report["heldout"] = heldout_perplexity(StariaGenerator.from_pretrained(model).nll, heldout,
                                                   limit=heldout_limit)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        fail(str(e))
    print_report(report, Console())
    if "heldout" in report:
        h = report["heldout"]
        Console().print(f"perplexity on {h['n_pieces']} held-out pieces of {h['corpus']} ({h['split']}): "
                        f"{h['perplexity']:.2f} ({h['n_tokens']} tokens)")
    path = write_json(report, out or directory / "evaluation.json")
    err.print(f"report -> {path}")
    if report["n_evaluated"] == 0:
        fail(f"{directory}: no MIDI file could be evaluated")
    raise typer.Exit(1 if report["skipped"] else 0)


def print_report(report: dict, console: Console) -> None:
    """A table: one row per piece, then the aggregate rates and skipped files."""
    requested, thresholds = report.get("requested_form"), report["thresholds"]
    table = Table(title=f"{report['directory']}" + (f" (form {requested})" if requested else ""),
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption=f"same: least alike same-letter pair (needs >= {thresholds['alike']}); diff: most "
                          f"alike different-letter pair (needs < {thresholds['distinct']}); "
                          "PCE: pitch-class entropy (bits)")
    names = [str(Path(p["name"]).with_suffix("")) if p["name"] else "-" for p in report["pieces"]]
    name_width = min(max([len(n) for n in names] + [5]), 24)
    for column in ("piece", "markers", "recovered", "found", "same", "diff", "PCE", "groove", "notes"):
        table.add_column(column, justify="left" if column in ("piece", "markers", "recovered") else "right",
                         overflow="fold" if column == "piece" else "ellipsis", no_wrap=column != "piece",
                         min_width=name_width if column == "piece" else None)
    for name, p in zip(names, report["pieces"]):
        s = p["statistics"]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        table.add_row(name, p["marker_letters"], p["recovered_form"],
                      "[green]yes[/green]" if p["form_found"] else "[red]no[/red]", fmt(p["min_same"]),
                      fmt(p["max_different"]), f"{s['pitch_class_entropy']:.2f}", f"{s['groove_consistency']:.3f}",
                      str(s["n_notes"]))
    console.print(table)
    agg = report["aggregate"]
    rates = ", ".join(f"{k} {v:.0%}" for k, v in agg.items() if k.endswith("_rate"))
    console.print(f"{agg['n_pieces']} pieces evaluated" + (f": {rates}" if rates else ""))
    following = agg.get("prompt_following")
    if following and following["n_sections"]:
        console.print(f"prompt following: {following['following_rate']:.0%} of {following['n_sections']} sections "
                      f"closer to their own snippet than to every other (chance {following['chance']:.0%})")
    for bad in report["skipped"]:
        console.print(f"[yellow]skipped[/yellow] {bad['path']}: {bad['error']}")
