"""`cadenza music generate`: pieces in a requested form, as MIDI (+ WAV, + piano roll)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

err = Console(stderr=True)


def generate(
    form: str = typer.Option(..., "--form", "-f", help="Form to follow: AB, ABA, ABAB, ABAC, ABCA, AABB, ..."),
    prompt: Optional[Path] = typer.Option(None, "--prompt", help="MIDI whose sections ('A', 'B' markers; else "
                                          "its opening as A) seed the piece; other letters come from the corpus."),
    num: int = typer.Option(1, "--num", "-n", help="Pieces to generate (in one batch)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (same seed, same pieces)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output MIDI file (one piece)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Output directory (several pieces)."),
    wav: bool = typer.Option(False, "--wav", help="Also render each piece to WAV (fluidsynth, GM soundfont)."),
    png: bool = typer.Option(False, "--png", help="Also draw each piece's piano roll with sections shaded."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (0 = greedy)."),
    top_p: Optional[float] = typer.Option(0.95, "--top-p", help="Nucleus sampling threshold."),
    min_p: Optional[float] = typer.Option(None, "--min-p", help="Drop tokens below min_p x the top probability."),
    cfg: float = typer.Option(1.0, "--cfg", help="Classifier-free guidance scale (1 = off)."),
    max_tokens: int = typer.Option(1024, "--max-tokens", help="Length of each piece in tokens (~3 per note)."),
    repeat: str = typer.Option("copy", "--repeat", help="Repeated sections: 'copy' replays the first occurrence "
                               "(da capo), 'free' lets the model write them again."),
    model: Optional[Path] = typer.Option(None, "--model", help="Exported generator directory (default: shipped)."),
    threads: int = typer.Option(1, help="Torch threads; decoding one token at a time gains little from more."),
) -> None:
    """Generate pieces that follow FORM, with a section marker at the start of each section."""
    import torch

    from cadenza.core.checkpoint import CheckpointError
    from cadenza.staria import MidiError
    from cadenza.staria.generate import GenerationConfig, StariaGenerator
    from cadenza.staria.midi import render_wav

    if (out is None) == (out_dir is None):
        err.print("[red]error[/red] give exactly one of --out FILE.mid (one piece) or --out-dir DIR")
        raise typer.Exit(2)
    if out is not None and num != 1:
        err.print("[red]error[/red] --out writes one piece; use --out-dir for --num > 1")
        raise typer.Exit(2)
    torch.set_num_threads(threads)
    try:
        generator = StariaGenerator.from_pretrained(model)
        config = GenerationConfig(temperature=temperature, top_p=top_p, min_p=min_p, cfg_scale=cfg, repeat=repeat,
                                  max_tokens=max_tokens, seed=seed)
        scores = generator.generate(form, prompt=prompt, num=num, config=config)
    except (ValueError, MidiError, CheckpointError, FileNotFoundError) as e:
        err.print(f"[red]error[/red] {e}")
        raise typer.Exit(2)
    paths = [out] if out is not None else [out_dir / f"{form}_{k:03d}.mid" for k in range(num)]
    for score, path in zip(scores, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        score.dump_midi(str(path))
        extras = []
        if wav:
            extras.append(str(render_wav(score, path.with_suffix(".wav"))))
        if png:
            from cadenza.staria.plots import piano_roll

            extras.append(str(piano_roll(score, path.with_suffix(".png"), title=f"{path.stem} ({form})")))
        markers = "".join(m.text for m in score.markers)
        err.print(f"{path}: {score.note_num()} notes, sections {markers}" + "".join(f", {e}" for e in extras))
