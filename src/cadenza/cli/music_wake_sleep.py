"""`cadenza music wake-sleep`: sleep (classifier on synthetic), wake (pseudo-label real music), generate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cadenza.cli.common import err, fail


def print_wake_report(report: dict, console: Console = err) -> None:
    """Kept/dropped pieces per recovered form, as a table."""
    table = Table(title="wake: pieces per recovered form",
                  caption=f"{report['corpus']}, threshold {report['threshold']}")
    for name in ("form", "kept", "dropped"):
        table.add_column(name, justify="left" if name == "form" else "right")
    for form, counts in report["per_form"].items():
        table.add_row(form, str(counts["kept"]), str(counts["dropped"]))
    table.add_row("total", str(report["kept"]), str(report["dropped"]), style="bold")
    console.print(table)
    reasons = ", ".join(f"{k} {v}" for k, v in report["dropped_because"].items()) or "none"
    console.print(f"dropped because: {reasons}")


def _route(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Split `classifier.KEY=V` / `generator.KEY=V` overrides into the two models' override lists."""
    routed: dict[str, list[str]] = {"classifier": [], "generator": []}
    for item in overrides:
        model, dot, rest = item.partition(".")
        if model not in routed or not dot:
            raise ValueError(f"override '{item}': start it with 'classifier.' or 'generator.', "
                             "e.g. classifier.train.max_steps=100")
        routed[model].append(rest)
    return routed["classifier"], routed["generator"]


def wake_sleep(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory: OUT/round1/{classifier,pseudo,generator}.")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="Config overrides routed by prefix: classifier.train.max_steps=100 generator.model.dim=128")] = None,
    synthetic: Annotated[Path | None, typer.Option(help="Synthetic corpus (sleep, generate).")] = None,
    corpus: Annotated[Path | None, typer.Option(help="Real corpus to pseudo-label (wake).")] = None,
    stage: Annotated[str, typer.Option(help="sleep | wake | generate | all")] = "all",
    rounds: Annotated[int, typer.Option(min=1, help="With --stage all: rounds; from round 2 the previous "
                                        "generator's pieces also train the classifier.")] = 1,
    round_: Annotated[int, typer.Option("--round", min=1, help="Which round a single --stage runs.")] = 1,
    classifier: Annotated[Path | None, typer.Option(help="Use this exported classifier (RUN_DIR/model) in round 1 "
                                                    "instead of training one.")] = None,
    classifier_config: Annotated[Path | None, typer.Option(help="Config for the classifier.")] = None,
    generator_config: Annotated[Path | None, typer.Option(help="Config for the generator.")] = None,
    threshold: Annotated[float, typer.Option(min=0, max=1, help="Keep a piece when every section's mean "
                                             "probability reaches this.")] = 0.9,
    min_fraction: Annotated[float, typer.Option(min=0, max=1, help="Label runs shorter than this share of a piece "
                                                "are noise.")] = 0.05,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per classifier batch (wake).")] = 8,
    overlap: Annotated[int, typer.Option(min=0, help="Tokens shared by neighbouring windows of a long piece "
                                         "(wake).")] = 128,
    limit: Annotated[int | None, typer.Option(min=1, help="Label only the first N pieces of the corpus "
                                              "(wake).")] = None,
    pseudo_weight: Annotated[float, typer.Option(help="Generator sampling weight of pseudo-labelled music "
                                                 "(synthetic has 1).")] = 1.0,
    dream_weight: Annotated[float, typer.Option(help="Classifier sampling weight of generated pieces "
                                                "(round >= 2).")] = 0.5,
    dreams_per_form: Annotated[int, typer.Option(min=0, help="Pieces the generator writes per form for the next "
                                                 "sleep.")] = 8,
    dream_max_tokens: Annotated[int, typer.Option(min=1, help="Length limit of those pieces, in tokens.")] = 1024,
    resume: Annotated[bool, typer.Option("--resume", help="Training stages continue from their last "
                                         "checkpoint.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the dreams' prompts and sampling.")] = 0,
) -> None:
    """Wake-sleep training: a section classifier learns on synthetic pieces, labels real music, and the
    generator trains on synthetic plus confidently labelled real pieces.

    Each stage runs alone with --stage (single stages use the files of --round).

    Under DDP (e.g. generator.train.devices=2) every rank re-runs this command: train one --stage at a time.
    """
    from cadenza.core.checkpoint import CheckpointError
    from cadenza.staria.wake_sleep import WakeConfig, WakeSleep

    try:
        classifier_overrides, generator_overrides = _route(overrides or [])
        run = WakeSleep(
            out=out, synthetic=synthetic, corpus=corpus, classifier=classifier,
            classifier_config=classifier_config, generator_config=generator_config,
            classifier_overrides=classifier_overrides, generator_overrides=generator_overrides,
            wake=WakeConfig(threshold=threshold, min_fraction=min_fraction, batch_size=batch_size,
                            overlap=overlap, limit=limit),
            pseudo_weight=pseudo_weight, dream_weight=dream_weight, dreams_per_form=dreams_per_form,
            dream_max_tokens=dream_max_tokens,
            resume=resume, seed=seed, progress=err.is_terminal,
        )
        reports = run.run(stage, rounds=rounds, only_round=round_)
    except (CheckpointError, FileNotFoundError) as e:
        fail(str(e))
    except ValueError as e:  # a missing option, an unknown stage, a config that does not fit
        raise typer.BadParameter(str(e)) from e
    for report in reports:
        print_wake_report(report)
        err.print(f"report: {Path(report['out']) / 'wake_report.json'}")
