"""`cadenza data speech`: build the multi-speaker speech corpus for Higgs Audio."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from cadenza.cli.common import fail


def speech(
    out: Annotated[Path, typer.Argument(help="Corpus directory (created; an existing one is completed).")],
    hours: Annotated[float, typer.Option(help="Target hours of audio in total.", min=0.001)] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed for the sentence and speaker splits.")] = 0,
    workers: Annotated[int, typer.Option(help="Parallel synthesis processes.", min=1)] = 2,
    engines: Annotated[str, typer.Option(
        help="Synthesize only these engines' voices this run, comma-separated (piper, hibari, kokoro, flite, "
             "espeak); the plan stays that of all voices. Default: all.")] = "",
) -> None:
    """Build a speech corpus: fortune-file sentences spoken by offline TTS voices, 24 kHz mono.

    Voices: Piper joe (about 30% of the hours), hibari heart, Kokoro-82M style tables and their mixtures,
    flite kal16/awb/rms/slt and espeak-ng accents x variants.

    Pitch/formant/tempo transforms widen them to over 300 speakers. Festival voices are never used.

    Ctrl-C (or SIGTERM) stops a build and still writes the manifest of what exists.

    Writes OUT/audio/SPEAKER/*.wav, OUT/manifest.jsonl, OUT/speakers.json and OUT/failures.jsonl.

    Sentences and speakers are split train/val/test; some speakers are heard only in val or test.

    Re-running skips wavs that already exist: a stopped build resumes, a larger --hours extends it.
    """
    from cadenza.higgs_audio.corpus import build_speech_corpus

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a killed background build writes its manifest
    try:
        report = build_speech_corpus(out, hours=hours, seed=seed, workers=workers,
                                     engines=[e.strip() for e in engines.split(",") if e.strip()] or None)
    except KeyboardInterrupt as exc:
        typer.echo(f"{out}: interrupted; the manifest lists the utterances synthesized so far", err=True)
        raise typer.Exit(130) from exc
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(
        f"{out}: {report.utterances} utterances, {report.hours:.2f} h, {report.speakers} speakers "
        f"({report.synthesized} synthesized, {report.skipped} already there, {len(report.failed)} failed) "
        f"in {report.seconds:.0f} s"
    )
    if report.failed:
        typer.echo(f"failed utterances are listed in {out / 'failures.jsonl'}", err=True)
        for failure in report.failed[:5]:
            typer.echo(f"  {failure['audio']}: {failure['error']}", err=True)
    if report.utterances == 0:
        fail(f"{out}: no utterances")
