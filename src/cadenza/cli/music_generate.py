"""`cadenza music generate`: pieces in a requested form, as MIDI (+ WAV, + piano roll)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cadenza.cli.common import (
    err, fail, form_option, output_dir_option, output_file_option, probability_option,
)


def _repeat_option(repeat: str) -> str:
    from cadenza.staria.generate import REPEAT_MODES

    if repeat not in REPEAT_MODES:
        raise typer.BadParameter(f"{repeat!r} is not one of {', '.join(REPEAT_MODES)}")
    return repeat


def generate(
    form: Annotated[str, typer.Option("--form", "-f", callback=form_option,
                                      help="Form to follow: AB, ABA, ABAB, ABAC, ABCA, AABB, ...")],
    prompt: Annotated[Path | None, typer.Option(help="MIDI whose sections ('A', 'B' markers; else its opening as A) "
                                                "seed the piece; other letters come from the corpus.")] = None,
    num: Annotated[int, typer.Option("--num", "-n", min=1, help="Pieces to generate (in one batch).")] = 1,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same pieces).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", callback=output_file_option,
                                             help="Output MIDI file (one piece).")] = None,
    out_dir: Annotated[Path | None, typer.Option(callback=output_dir_option,
                                                 help="Output directory (several pieces).")] = None,
    wav: Annotated[bool, typer.Option("--wav", help="Also render each piece to WAV (fluidsynth, GM soundfont).")] = False,
    png: Annotated[bool, typer.Option("--png", help="Also draw each piece's piano roll with sections shaded.")] = False,
    temperature: Annotated[float, typer.Option(min=0, help="Sampling temperature (0 = greedy).")] = 1.0,
    top_p: Annotated[float | None, typer.Option(callback=probability_option,
                                                help="Nucleus sampling threshold, in (0, 1].")] = 0.95,
    min_p: Annotated[float | None, typer.Option(callback=probability_option,
                                                help="Drop tokens below min_p x the top probability.")] = None,
    cfg: Annotated[float, typer.Option(min=0, help="Classifier-free guidance scale (1 = off).")] = 1.0,
    max_tokens: Annotated[int, typer.Option(min=1, help="Length of each piece in tokens (~3 per note).")] = 1024,
    repeat: Annotated[str, typer.Option(callback=_repeat_option, help="Repeated sections: 'copy' replays the first "
                                        "occurrence (da capo), 'free' lets the model write them again.")] = "copy",
    model: Annotated[Path | None, typer.Option(help="Exported generator directory (default: shipped).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Torch threads; decoding one token at a time gains little "
                                         "from more.")] = 1,
) -> None:
    """Generate pieces that follow FORM, with a section marker at the start of each section."""
    from cadenza.staria.generate import min_max_tokens

    if (out is None) == (out_dir is None):
        raise typer.BadParameter("give exactly one of --out FILE.mid (one piece) or --out-dir DIR",
                                 param_hint="'--out' / '--out-dir'")
    if out is not None and num != 1:
        raise typer.BadParameter("--out writes one piece; use --out-dir for --num > 1", param_hint="'--out'")
    shortest = min_max_tokens(form)
    if max_tokens < shortest:
        raise typer.BadParameter(f"{max_tokens} is too few for form {form}: give at least {shortest}",
                                 param_hint="'--max-tokens'")
    import torch

    from cadenza.core.checkpoint import CheckpointError
    from cadenza.staria import MidiError
    from cadenza.staria.generate import GenerationConfig, StariaGenerator
    from cadenza.staria.midi import load_score, render_wav

    torch.set_num_threads(threads)
    try:
        prompt_score = load_score(prompt) if prompt is not None else None
        generator = StariaGenerator.from_pretrained(model)
    except (MidiError, CheckpointError, FileNotFoundError) as e:
        fail(str(e))
    config = GenerationConfig(temperature=temperature, top_p=top_p, min_p=min_p, cfg_scale=cfg, repeat=repeat,
                              max_tokens=max_tokens, seed=seed)
    try:
        scores = generator.generate(form, prompt=prompt_score, num=num, config=config)
    except ValueError as e:  # the one left after the checks above: a prompt of many instruments needs more tokens
        raise typer.BadParameter(str(e), param_hint="'--max-tokens'") from e
    paths = [out] if out is not None else [out_dir / f"{form}_{k:03d}.mid" for k in range(num)]
    for score, path in zip(scores, paths):
        extras = []
        try:
            score.dump_midi(str(path))
            if wav:
                extras.append(str(render_wav(score, path.with_suffix(".wav"))))
            if png:
                from cadenza.staria.plots import piano_roll

                extras.append(str(piano_roll(score, path.with_suffix(".png"), title=f"{path.stem} ({form})")))
        except (OSError, RuntimeError) as e:  # a full disk; fluidsynth missing or failing
            fail(f"{path}: {e}")
        markers = "".join(m.text for m in score.markers)
        err.print(f"{path}: {score.note_num()} notes, sections {markers}" + "".join(f", {e}" for e in extras))
