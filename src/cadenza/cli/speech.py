"""`cadenza speech`: the audio tokenizer (encode/decode files, train, evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Speech: the audio tokenizer (codec) and the Higgs Audio LM (train, generate).")
codec_app = typer.Typer(no_args_is_help=True, help="Encode wavs to codes (.npy) and decode codes back to 24 kHz wavs.")
app.add_typer(codec_app, name="codec")

CodecOption = Annotated[Path | None, typer.Option("--codec", help="Audio tokenizer (codec) directory (default: the shipped one).")]
# `--model` means the speech LM in every command; in the commands that take only the codec it was once the
# codec's option, and still reads as --codec there (a hidden alias: click normalizes option names with it).
OLD_CODEC_OPTION = {"token_normalize_func": lambda name: "codec" if name == "model" else name}


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@app.command("train-codec")
def train_codec_cmd(
    config: Annotated[Path, typer.Option(help="YAML config (sections model, data, task, train), e.g. configs/codec_small.yaml.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.max_steps=100.")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory (default: train.run_dir, else runs/<config name>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR/checkpoints/last.ckpt (fresh if none yet).")] = False,
) -> None:
    """Train the audio tokenizer (core training harness); checkpoints, logs and the exported model/ go to RUN_DIR."""
    from cadenza.higgs_audio.codec.train import train

    try:
        export = train(config, overrides or [], resume=resume, run_dir=run_dir)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        _fail(str(exc))
    if export is not None:  # None: another DDP process
        typer.echo(f"trained codec exported to {export}")


@app.command("export-codec")
def export_codec_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Lightning checkpoint (.ckpt) of a train-codec run.")],
    out_dir: Annotated[Path, typer.Argument(help="Directory for model.safetensors + config.json.")],
    half: Annotated[bool, typer.Option("--half", help="Store weights as float16 (half the size; for shipping).")] = False,
) -> None:
    """Turn a training checkpoint into the shipped format (safetensors + config.json, no pickle)."""
    from cadenza.higgs_audio.codec.train import export

    if not checkpoint.exists():
        _fail(f"{checkpoint}: no such checkpoint")
    try:
        typer.echo(f"{checkpoint} -> {export(checkpoint, out_dir, half=half)}")
    except ValueError as exc:
        _fail(str(exc))


def _load_tokenizer(codec: Path | None):
    from cadenza.higgs_audio.codec.api import load_audio_tokenizer

    try:
        return load_audio_tokenizer(codec)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))


def _out_names(paths: list[Path], suffix: str) -> dict[Path, str]:
    """NAME + suffix per input; inputs whose names collide get their parent folder prepended."""
    stems: dict[str, int] = {}
    for p in paths:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    return {p: (f"{p.parent.name}_{p.stem}" if stems[p.stem] > 1 else p.stem) + suffix for p in paths}


@codec_app.command("encode", context_settings=OLD_CODEC_OPTION)
def codec_encode(
    wavs: Annotated[list[Path], typer.Argument(help="Audio files (any format soundfile reads, any rate, mono/stereo).")],
    out_dir: Annotated[Path, typer.Option(help="Where NAME.npy files go.")],
    codebooks: Annotated[int | None, typer.Option(help="Keep the first K codebooks (lower bitrate); default all 8.")] = None,
    codec: CodecOption = None,
) -> None:
    """Encode audio files to codes: NAME.npy, an int16 array (K, T) at 25 frames/s (K = 8 by default).

    With --codebooks K < 8 the file holds only the first K rows (the coarse codebooks); `decode`
    reads any K from 1 to 8. A bad file is reported and skipped; the exit code is 1 if any failed.
    """
    import numpy as np

    from cadenza.core.audio import AudioError

    tok = _load_tokenizer(codec)
    if codebooks is not None and not 1 <= codebooks <= tok.num_codebooks:
        _fail(f"--codebooks must be between 1 and {tok.num_codebooks}, got {codebooks}")
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
        typer.echo(f"{failed} of {len(wavs)} files failed", err=True)
        raise typer.Exit(1)


@codec_app.command("decode", context_settings=OLD_CODEC_OPTION)
def codec_decode(
    npys: Annotated[list[Path], typer.Argument(help="Code files (K, T) written by `codec encode`.")],
    out_dir: Annotated[Path, typer.Option(help="Where NAME.wav files (24 kHz mono) go.")],
    codec: CodecOption = None,
) -> None:
    """Decode code files to 24 kHz wavs; a bad file is reported and skipped, exit 1 if any failed."""
    import numpy as np

    from cadenza.core.audio import write_audio

    tok = _load_tokenizer(codec)
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
        typer.echo(f"{failed} of {len(npys)} files failed", err=True)
        raise typer.Exit(1)


@app.command("eval-codec", context_settings=OLD_CODEC_OPTION)
def eval_codec_cmd(
    manifest: Annotated[Path, typer.Option(help="Speech corpus manifest.jsonl.")] = Path("data/speech/manifest.jsonl"),
    split: Annotated[str, typer.Option(help="Manifest split to evaluate (held-out sentences).")] = "test",
    codec: CodecOption = None,
    per_group: Annotated[int, typer.Option(help="Clips from seen speakers and from unseen speakers each.")] = 24,
    festival: Annotated[int, typer.Option(help="Clips per Festival voice (held-out voices, made at eval time); 0 = none.")] = 8,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for picking clips.")] = 0,
    codebooks: Annotated[int | None, typer.Option(
        min=1, help="Resynthesize from the first K codebooks only (1: does codebook 0 alone carry the words?).")] = None,
) -> None:
    """Resynthesis quality on held-out speech: Whisper WER (original vs resynth), speaker similarity, PESQ, STOI."""
    import json
    from dataclasses import asdict

    from cadenza.higgs_audio.codec.codec_eval import evaluate_codec, format_table, manifest_clips
    from cadenza.higgs_audio.speech_metrics import festival_clips

    tok = _load_tokenizer(codec)
    if not manifest.exists():
        _fail(f"{manifest}: no such manifest")
    clips = manifest_clips(manifest, split, per_group, seed)
    if festival:
        sentences = list(dict.fromkeys(c.text for c in clips))
        clips += festival_clips(sentences, Path("runs/festival_eval"), festival)
    if not clips:
        _fail(f"no clips in split {split!r} of {manifest}")
    if codebooks is not None and codebooks > tok.num_codebooks:
        _fail(f"--codebooks {codebooks}: this codec has {tok.num_codebooks}")
    report = evaluate_codec(tok, clips, model_name=str(codec or "shipped"), codebooks=codebooks)
    typer.echo(format_table(report))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(asdict(report), indent=1) + "\n")
        typer.echo(f"report written to {out}")


# ----------------------------------------------------------------------------- the audio language model


@app.command("encode-corpus", context_settings=OLD_CODEC_OPTION)
def encode_corpus_cmd(
    corpus: Annotated[Path, typer.Argument(help="Speech corpus directory (from `cadenza data speech`).")],
    codec: CodecOption = None,
) -> None:
    """Encode every utterance of a corpus into audio codes once (CORPUS/codes/<codec hash>/), for `speech train`."""
    from cadenza.higgs_audio.dataset import encode_corpus

    try:
        cache = encode_corpus(corpus, codec)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"codes in {cache}")


@app.command("align-corpus", context_settings=OLD_CODEC_OPTION)
def align_corpus_cmd(
    corpus: Annotated[Path, typer.Argument(help="Speech corpus directory with its code cache (`speech encode-corpus`).")],
    text_tokenizer: Annotated[Path | None, typer.Option(help="The LM's text tokenizer (tokenizer.json of its run or model; default: built from the corpus).")] = None,
    codec: CodecOption = None,
    epochs: Annotated[int, typer.Option(help="Training epochs of the aligner (when it is not trained yet).")] = 3,
) -> None:
    """Find where each transcript token is spoken (a CTC aligner over the codes), for the LM's guided attention."""
    import logging

    from cadenza.higgs_audio.aligner import align_corpus
    from cadenza.higgs_audio.dataset import corpus_tokenizer
    from cadenza.higgs_audio.text import TextTokenizer

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        tokenizer = TextTokenizer.load(text_tokenizer) if text_tokenizer else corpus_tokenizer(corpus)
        out = align_corpus(corpus, tokenizer, codec, epochs=epochs)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"token frames in {out}")


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Option(help="YAML config (sections model, data, finetune, train), e.g. configs/speech_small.yaml.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.max_steps=100.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR/checkpoints/last.ckpt.")] = False,
) -> None:
    """Train or fine-tune the Higgs Audio LM (text CE + per-codebook audio CE) on an encoded speech corpus."""
    from cadenza.core.checkpoint import ConfigError
    from cadenza.higgs_audio.train import train

    try:
        export = train(config, overrides or [], resume=resume)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if export is not None:  # None: another DDP process
        typer.echo(f"trained model exported to {export}")


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Lightning checkpoint (.ckpt) of a `speech train` run.")],
    out_dir: Annotated[Path, typer.Argument(help="Model directory (weights, config, tokenizer.json).")],
    half: Annotated[bool, typer.Option("--half", help="Store weights as float16 (for shipping).")] = False,
    codec: Annotated[Path | None, typer.Option(help="The audio tokenizer the run trained on (default: the shipped one).")] = None,
) -> None:
    """Turn a training checkpoint of the audio LM into a model directory the engine loads."""
    from cadenza.higgs_audio.train import export

    if not checkpoint.exists():
        _fail(f"{checkpoint}: no such checkpoint")
    typer.echo(f"{checkpoint} -> {export(checkpoint, out_dir, codec=codec, half=half)}")
