"""`cadenza speech encode-corpus`, `align-corpus`, `train` and `export`: the Higgs Audio LM's data and training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cadenza.cli.common import fail
from cadenza.cli.speech_codec import CodecOption


def encode_corpus(
    corpus: Annotated[Path, typer.Argument(help="Speech corpus directory (from `cadenza data speech`).")],
    codec: CodecOption = None,
) -> None:
    """Encode every utterance of a corpus into audio codes once (CORPUS/codes/<codec hash>/), for `speech train`."""
    from cadenza.higgs_audio.dataset import encode_corpus as run

    try:
        cache = run(corpus, codec)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"codes in {cache}")


def align_corpus(
    corpus: Annotated[Path, typer.Argument(help="Speech corpus directory with its code cache (`speech encode-corpus`).")],
    text_tokenizer: Annotated[Path | None, typer.Option(help="The LM's text tokenizer (tokenizer.json of its run or model; default: built from the corpus).")] = None,
    codec: CodecOption = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of the aligner (when it is not trained yet).")] = 3,
) -> None:
    """Find where each transcript token is spoken (a CTC aligner over the codes), for the LM's guided attention."""
    import logging

    from cadenza.higgs_audio.aligner import align_corpus as run
    from cadenza.higgs_audio.dataset import corpus_tokenizer
    from cadenza.higgs_audio.text import TextTokenizer

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        tokenizer = TextTokenizer.load(text_tokenizer) if text_tokenizer else corpus_tokenizer(corpus)
        out = run(corpus, tokenizer, codec, epochs=epochs)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"token frames in {out}")


def train(
    config: Annotated[Path, typer.Option(help="YAML config (sections model, data, finetune, train), e.g. configs/speech_small.yaml.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.max_steps=100.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR/checkpoints/last.ckpt.")] = False,
) -> None:
    """Train or fine-tune the Higgs Audio LM (text CE + per-codebook audio CE) on an encoded speech corpus."""
    from cadenza.higgs_audio.train import train as run

    try:
        export = run(config, overrides or [], resume=resume)
    except (FileNotFoundError, ValueError) as exc:  # ConfigError and CheckpointError are ValueErrors
        fail(str(exc))
    if export is not None:  # None: another DDP process
        typer.echo(f"trained model exported to {export}")


def export(
    checkpoint: Annotated[Path, typer.Argument(help="Lightning checkpoint (.ckpt) of a `speech train` run.")],
    out_dir: Annotated[Path, typer.Argument(help="Model directory (weights, config, tokenizer.json).")],
    half: Annotated[bool, typer.Option("--half", help="Store weights as float16 (for shipping).")] = False,
    codec: Annotated[Path | None, typer.Option(help="The audio tokenizer the run trained on (default: the shipped one).")] = None,
    decode_codebooks: Annotated[int | None, typer.Option(min=1, help="How many of its codebooks (the first K) the engine decodes to audio (default: all); choose by `cadenza speech eval --decode-codebooks`.")] = None,
) -> None:
    """Turn a training checkpoint of the audio LM into a model directory the engine loads."""
    from cadenza.higgs_audio.train import export as run

    if not checkpoint.exists():
        fail(f"{checkpoint}: no such checkpoint")
    try:
        typer.echo(f"{checkpoint} -> {run(checkpoint, out_dir, codec=codec, half=half, decode_codebooks=decode_codebooks)}")
    except (FileNotFoundError, ValueError) as exc:  # CheckpointError is a ValueError
        fail(str(exc))
