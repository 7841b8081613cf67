"""`cadenza data music21` and `cadenza data ingest`: build tokenized corpora of real music."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cadenza.cli.common import fail


def _print_summary(summary) -> None:
    from cadenza.staria.cache import SPLITS

    splits = ", ".join(f"{s} {summary.by_split.get(s, 0)}" for s in SPLITS)
    sources = ", ".join(f"{s} {n}" for s, n in sorted(summary.by_source.items())) or "none"
    skipped = sum(summary.skipped.values())
    reasons = ", ".join(f"{kind} {n}" for kind, n in sorted(summary.skipped.items(), key=lambda kv: -kv[1]))
    print(f"pieces:  {summary.pieces} ({sources})")
    print(f"tokens:  {summary.tokens}")
    print(f"split:   {splits}")
    print(f"skipped: {skipped}" + (f" ({reasons})" if reasons else "")
          + f"; duplicates dropped: {summary.duplicates}")
    print(f"work:    {summary.exported} exported, {summary.tokenized} tokenized, {summary.reused} reused "
          f"from the cache, {summary.seconds:.1f} s")
    print(f"corpus:  {summary.out_dir} (skipped files and reasons in {summary.out_dir / 'report.jsonl'})")
    if summary.pieces == 0:
        fail("nothing could be built")


def music21(
    out: Annotated[Path, typer.Argument(help="Corpus directory to create or update.")],
    sources: Annotated[str, typer.Option(help="Comma-separated: bach, folk, palestrina.")] = "bach,folk",
    workers: Annotated[int, typer.Option(min=0, help="Worker processes (0: run in this process).")] = 2,
    limit: Annotated[int | None, typer.Option(min=1, help="Keep only the first N pieces of each source.")] = None,
) -> None:
    """Build a corpus from the music21 corpus shipped in its wheel.

    Sources: bach (the 371 chorales in Riemenschneider's numbering,
    350 distinct files), folk (~12,900 ABC tunes, one MIDI per tune via
    symusic's abc2midi), palestrina (1,318 Humdrum files).

    MIDI files go to OUT/midi; tokens to OUT/tokens.bin + index.npy,
    one row per piece to OUT/manifest.jsonl (90/5/5 split by content
    hash), skipped files and why to OUT/report.jsonl.
    A re-run converts and tokenizes only what is new.
    """

    from cadenza.staria.corpus import build_music21_corpus

    names = tuple(s.strip() for s in sources.split(",") if s.strip())
    try:
        summary = build_music21_corpus(out, sources=names, workers=workers, limit=limit, progress=True)
    except ValueError as e:  # an unknown source
        raise typer.BadParameter(str(e), param_hint="'--sources'") from e
    _print_summary(summary)


def ingest(
    midi_dir: Annotated[Path, typer.Argument(help="Folder of MIDI files (searched recursively).")],
    out: Annotated[Path, typer.Argument(help="Corpus directory to create or update.")],
    workers: Annotated[int, typer.Option(help="Worker processes (0: run in this process).")] = 2,
) -> None:
    """Build a corpus from a folder of MIDI files (.mid/.midi, recursively).

    Tokens go to OUT/tokens.bin + index.npy, one row per piece to
    OUT/manifest.jsonl (90/5/5 split by content hash), skipped files and
    why to OUT/report.jsonl. A re-run tokenizes only files that are new.
    """

    from cadenza.staria.corpus import ingest_midi_dir

    try:
        summary = ingest_midi_dir(midi_dir, out, workers=workers, progress=True)
    except FileNotFoundError as e:
        fail(str(e))
    _print_summary(summary)


def export(
    corpus: Annotated[Path, typer.Argument(help="Corpus directory (real or synthetic).")],
    out_dir: Annotated[Path, typer.Argument(help="Directory for the MIDI files.")],
    form: Annotated[str | None, typer.Option(help="Only synthetic pieces of this form, e.g. ABA.")] = None,
    split: Annotated[str | None, typer.Option(help="Only this split: train, val or test.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many pieces.")] = 10,
) -> None:
    """Write pieces of a corpus back to MIDI (sections as markers "A", "B", ...) to listen to them."""
    from cadenza.staria.cache import TokenCache
    from cadenza.staria.tokenizer import StariaTokenizer

    try:
        cache = TokenCache(corpus)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    tok = StariaTokenizer()
    chosen = [i for i in cache.indices(split) if form is None or cache.rows[i].get("form") == form][:limit]
    if not chosen:
        fail(f"{corpus}: no pieces match (form={form}, split={split})")
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in chosen:
        name = str(cache.rows[i].get("id", i)).replace("/", "_")
        tok.detokenize(cache.ids(i)).dump_midi(str(out_dir / f"{name}.mid"))
    print(f"{len(chosen)} MIDI files written to {out_dir}")
