"""`cadenza data synth`: synthetic structured pieces stitched from a real corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cadenza.cli.common import err, fail


def synth(
    corpus: Annotated[Path, typer.Argument(help="Real corpus directory (`cadenza data music21` or `ingest`).")],
    out: Annotated[Path, typer.Argument(help="Output corpus directory for the synthetic pieces.")],
    per_form: Annotated[int, typer.Option(min=1, help="Train pieces per form (val/test get ~1/18 of it).")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed: the same corpus and seed give the same pieces.")] = 0,
    min_tokens: Annotated[int, typer.Option(min=64, help="Shortest target piece length in tokens.")] = 1024,
    max_tokens: Annotated[int, typer.Option(min=64, help="Longest target piece length in tokens.")] = 4095,
) -> None:
    """Stitch synthetic pieces of every form (AB, ABA, ABAC, ...) with a section label on every token.

    Each letter takes the opening of its own real source; repeated letters replay it (maybe varied).

    Val/test pieces use only val/test sources, so evaluation is on unseen material.
    """
    from cadenza.staria.synthetic import synthesize

    if min_tokens > max_tokens:
        raise typer.BadParameter(f"{min_tokens} is more than --max-tokens {max_tokens}", param_hint="'--min-tokens'")
    try:
        counts = synthesize(corpus, out, per_form=per_form, seed=seed,
                            min_tokens=min_tokens, max_tokens=max_tokens)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    report = out / "report.jsonl"
    problems = sum(1 for line in report.read_text().splitlines() if line.strip()) if report.exists() else 0
    err.print(f"{sum(counts.values())} synthetic pieces -> {out} "
              f"({', '.join(f'{k} {v}' for k, v in counts.items())})"
              + (f"; {problems} notes in {report}" if problems else ""))
