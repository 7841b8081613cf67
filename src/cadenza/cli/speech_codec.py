"""`cadenza speech train-codec`, `export-codec`, `eval-codec` and `codec encode` / `codec decode`: the audio
tokenizer (codec) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cadenza.cli.common import err, fail

CodecOption = Annotated[Path | None, typer.Option("--codec", help="Audio tokenizer (codec) directory (default: the shipped one).")]
# `--model` means the speech LM in every command; in the commands that take only the codec it was once the
# codec's option, and still reads as --codec there (a hidden alias: click normalizes option names with it).
OLD_CODEC_OPTION = {"token_normalize_func": lambda name: "codec" if name == "model" else name}


def load_codec(codec: Path | None):
    """The audio tokenizer in `codec` (None: the shipped one), or exit 1 naming what is wrong."""
    from cadenza.higgs_audio.codec.api import load_audio_tokenizer

    try:
        return load_audio_tokenizer(codec)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))


def train_codec(
    config: Annotated[Path, typer.Option(help="YAML config (sections model, data, task, train), e.g. configs/codec_small.yaml.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.max_steps=100.")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory (default: train.run_dir, else runs/<config name>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR/checkpoints/last.ckpt (fresh if none yet).")] = False,
) -> None:
    """Train the audio tokenizer (core training harness); checkpoints, logs and the exported model/ go to RUN_DIR."""
    from cadenza.higgs_audio.codec.train import train

    try:
        export = train(config, overrides or [], resume=resume, run_dir=run_dir)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:  # ConfigError and CheckpointError are ValueErrors
        fail(str(exc))
    if export is not None:  # None: another DDP process
        typer.echo(f"trained codec exported to {export}")


def export_codec(
    checkpoint: Annotated[Path, typer.Argument(help="Lightning checkpoint (.ckpt) of a train-codec run.")],
    out_dir: Annotated[Path, typer.Argument(help="Directory for model.safetensors + config.json.")],
    half: Annotated[bool, typer.Option("--half", help="Store weights as float16 (half the size; for shipping).")] = False,
) -> None:
    """Turn a training checkpoint into the shipped format (safetensors + config.json, no pickle)."""
    from cadenza.higgs_audio.codec.train import export

    if not checkpoint.exists():
        fail(f"{checkpoint}: no such checkpoint")
    try:
        typer.echo(f"{checkpoint} -> {export(checkpoint, out_dir, half=half)}")
    except ValueError as exc:
        fail(str(exc))


def _out_names(paths: list[Path], suffix: str) -> dict[Path, str]:
    """NAME + suffix per input; inputs whose names collide get their parent folder prepended."""
    stems: dict[str, int] = {}
    for p in paths:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    return {p: (f"{p.parent.name}_{p.stem}" if stems[p.stem] > 1 else p.stem) + suffix for p in paths}


def encode(
    wavs: Annotated[list[Path], typer.Argument(help="Audio files (any format soundfile reads, any rate, mono/stereo).")],
    out_dir: Annotated[Path, typer.Option(help="Where NAME.npy files go.")],
    codebooks: Annotated[int | None, typer.Option(min=1, help="Keep the first K codebooks (lower bitrate); default all 8.")] = None,
    codec: CodecOption = None,
) -> None:
    """Encode audio files to codes: NAME.npy, an int16 array (K, T) at 25 frames/s (K = 8 by default).

    With --codebooks K < 8 the file holds only the first K rows (the coarse codebooks); `decode`
    reads any K from 1 to 8. A bad file is reported and skipped; the exit code is 1 if any failed.
    """
    import numpy as np

    from cadenza.core.audio import AudioError

    tok = load_codec(codec)
    if codebooks is not None and codebooks > tok.num_codebooks:
        fail(f"--codebooks must be between 1 and {tok.num_codebooks}, got {codebooks}")
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path, name in _out_names(wavs, ".npy").items():
        try:
            codes = tok.encode(path)[: codebooks or tok.num_codebooks]
        except (AudioError, FileNotFoundError, ValueError, RuntimeError) as exc:
            failed += 1
            typer.echo(f"failed: {exc}", err=True)
            continue
        np.save(out_dir / name, codes.numpy().astype(np.int16))
        typer.echo(f"{path} -> {out_dir / name} {tuple(codes.shape)}")
    if failed:
        fail(f"{failed} of {len(wavs)} files failed")


def decode(
    npys: Annotated[list[Path], typer.Argument(help="Code files (K, T) written by `codec encode`.")],
    out_dir: Annotated[Path, typer.Option(help="Where NAME.wav files (24 kHz mono) go.")],
    codec: CodecOption = None,
) -> None:
    """Decode code files to 24 kHz wavs; a bad file is reported and skipped, exit 1 if any failed."""
    import numpy as np

    from cadenza.core.audio import write_audio

    tok = load_codec(codec)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path, name in _out_names(npys, ".wav").items():
        try:
            codes = np.load(path, allow_pickle=False)
            audio = tok.decode(codes)
        except (OSError, ValueError, EOFError) as exc:
            failed += 1
            typer.echo(f"failed: {path}: {exc}", err=True)
            continue
        write_audio(out_dir / name, audio, tok.sampling_rate)
        typer.echo(f"{path} -> {out_dir / name} ({len(audio) / tok.sampling_rate:.2f} s)")
    if failed:
        fail(f"{failed} of {len(npys)} files failed")


def eval_codec(
    manifest: Annotated[Path, typer.Option(help="Speech corpus manifest.jsonl.")] = Path("data/speech/manifest.jsonl"),
    split: Annotated[str, typer.Option(help="Manifest split to evaluate (held-out sentences).")] = "test",
    codec: CodecOption = None,
    per_group: Annotated[int, typer.Option(min=0, help="Clips from seen speakers and from unseen speakers each.")] = 24,
    festival: Annotated[int, typer.Option(min=0, help="Clips per Festival voice (held-out voices, made at eval time); 0 = none.")] = 8,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for picking clips.")] = 0,
    codebooks: Annotated[int | None, typer.Option(
        min=1, help="Resynthesize from the first K codebooks only (1: does codebook 0 alone carry the words?).")] = None,
) -> None:
    """Resynthesis quality on held-out speech: Whisper WER (original vs resynth), speaker similarity, PESQ, STOI."""
    from dataclasses import asdict

    from cadenza.cli.common import write_json
    from cadenza.higgs_audio.codec.codec_eval import evaluate_codec, format_table, manifest_clips
    from cadenza.higgs_audio.speech_metrics import festival_clips

    tok = load_codec(codec)
    if not manifest.exists():
        fail(f"{manifest}: no such manifest")
    try:
        clips = manifest_clips(manifest, split, per_group, seed)
    except ValueError as exc:  # a line that is not JSON
        fail(str(exc))
    if festival:
        sentences = list(dict.fromkeys(c.text for c in clips))
        clips += festival_clips(sentences, Path("runs/festival_eval"), festival)
    if not clips:
        fail(f"no clips in split {split!r} of {manifest}")
    if codebooks is not None and codebooks > tok.num_codebooks:
        fail(f"--codebooks {codebooks}: this codec has {tok.num_codebooks}")
    report = evaluate_codec(tok, clips, model_name=str(codec or "shipped"), codebooks=codebooks)
    typer.echo(format_table(report))
    if out:
        write_json(asdict(report), out)
        err.print(f"report written to {out}", highlight=False)
