"""`cadenza speech generate`, `voices` and `eval`: text to speech from the command line, and how well it speaks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from cadenza.cli.common import fail

NO_SHIPPED_MODEL = ("the shipped speech model is missing from this install (cadenza/pretrained/higgs_audio_small): "
                    "pass --model DIR, a model directory written by `cadenza speech train` or `cadenza speech export`")
MODEL_HELP = ("Speech LM directory (from `cadenza speech train` or `export`; default: the shipped preview, "
              "cadenza/pretrained/higgs_audio_small, see its MODEL_CARD.md).")
CODEC_HELP = "Audio tokenizer directory (default: the shipped one)."
BEST_OF_HELP = ("Say each request this many times (in one batch) and keep the take the audio tokenizer's phoneme "
                "recognizer reads as the transcript most easily; not with --stream.")
GUIDANCE_HELP = ("Weight of the codec's phoneme head in sampling codebook 0, toward the transcript token being "
                 "spoken (0: plain sampling; default: the engine's, GenerationSettings.phoneme_guidance).")


def _engine(model: Path | None, codec: Path | None, decode_codebooks: int | None = None):
    from cadenza.higgs_audio.engine import SHIPPED_MODEL, HiggsAudioServeEngine

    shipped = (SHIPPED_MODEL / "config.json").is_file()
    if model is None and not shipped:
        fail(NO_SHIPPED_MODEL)
    if model is not None and not model.is_dir():
        fail(f"{model}: no such directory" + ("" if shipped else f"; {NO_SHIPPED_MODEL}"))
    try:
        return HiggsAudioServeEngine(model, codec, decode_codebooks=decode_codebooks)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))


def _settings(seed: int | None, temperature: float, max_new_tokens: int, phoneme_guidance: float | None,
              best_of: int = 1):
    """GenerationSettings from the CLI's options (phoneme_guidance None: the engine's default)."""
    from cadenza.higgs_audio.engine import GenerationSettings

    guidance = {} if phoneme_guidance is None else {"phoneme_guidance": phoneme_guidance}
    return GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, best_of=best_of,
                              **guidance)


def _request(engine, transcript: str, voice: str | None, ref_audio: str | None, ref_text: str | None,
             scene: str | None, chunk_method: str | None, settings, ref_in_system: bool = False):
    """A SpeechRequest from CLI-style fields (no scene: the default one) and GenerationSettings; ValueError
    naming the bad field."""
    from cadenza.higgs_audio.prompt import DEFAULT_SCENE
    from cadenza.higgs_audio.speak import SpeechRequest, file_reference, voice_reference

    references = {}
    if voice and ref_audio:
        raise ValueError("give --voice or --ref-audio, not both")
    if voice:
        references = {n: voice_reference(engine, name.strip()) for n, name in enumerate(voice.split(","))}
    elif ref_audio:
        audios = [a.strip() for a in ref_audio.split(",")]
        texts = [t.strip() for t in (ref_text or "").split("|")] if ref_text else []
        if len(texts) != len(audios):
            raise ValueError(f"--ref-text needs one transcript per reference clip ({len(audios)}; separate them with '|')")
        for audio in audios:
            if not Path(audio).is_file():
                raise ValueError(f"reference audio {audio}: no such file")
        references = {n: file_reference(engine, a, t) for n, (a, t) in enumerate(zip(audios, texts))}
    return SpeechRequest(transcript, references, scene=DEFAULT_SCENE if scene is None else scene,
                         ref_in_system=ref_in_system, chunk_method=chunk_method, settings=settings)


def _write(path: Path, audio, sampling_rate: int) -> None:
    from cadenza.core.audio import write_audio

    path.parent.mkdir(parents=True, exist_ok=True)
    write_audio(path, audio, sampling_rate)


def _written(path: Path, audio, sampling_rate: int, usage: dict) -> str:
    """What to print for a written file: its length, the chunks it was said in, and whether the step limit cut
    the model's speech."""
    line = f"{path}: {len(audio) / sampling_rate:.2f} s"
    if usage.get("chunks", 1) > 1:
        line += f" in {usage['chunks']} chunks"
    return line + (" (stopped at --max-new-tokens before the model finished)" if usage.get("finish_reason") == "length" else "")


def generate(
    out: Annotated[Path | None, typer.Option(help="Output wav (single request).")] = None,
    transcript: Annotated[str | None, typer.Option(help="Text to speak, or a path to a text file. [SPEAKERn] tags make a dialogue.")] = None,
    voice: Annotated[str | None, typer.Option(help="Shipped voice preset(s), comma-separated per speaker (see `cadenza speech voices`).")] = None,
    ref_audio: Annotated[str | None, typer.Option(help="Reference clip(s) to clone, comma-separated per speaker.")] = None,
    ref_text: Annotated[str | None, typer.Option(help="Transcript(s) of the reference clip(s), separated by '|'.")] = None,
    ref_in_system: Annotated[bool, typer.Option(help="Put references in the system message instead of a user/assistant pair.")] = False,
    scene: Annotated[str | None, typer.Option(help="Scene description for the system prompt.")] = None,
    chunk_method: Annotated[str | None, typer.Option(help="Long form: 'word' (paragraphs/sentences) or 'speaker' (per turn). Default: in one piece, or in word chunks if it cannot be said within --max-new-tokens at a reading pace or does not fit in the model's context.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same audio).")] = None,
    temperature: Annotated[float, typer.Option(min=0, help="Sampling temperature.")] = 0.7,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Decode steps per chunk (25 audio frames = 1 s).")] = 1024,
    phoneme_guidance: Annotated[float | None, typer.Option(min=0, help=GUIDANCE_HELP)] = None,
    best_of: Annotated[int, typer.Option(min=1, help=BEST_OF_HELP)] = 1,
    stream: Annotated[bool, typer.Option("--stream", help="Decode while generating; report time to first audio.")] = False,
    batch: Annotated[Path | None, typer.Option(help="JSONL requests {id, transcript, voice?, ref_audio?, ref_text?, seed?}.")] = None,
    out_dir: Annotated[Path | None, typer.Option(help="With --batch: where <id>.wav files go.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="With --batch: requests decoded together.")] = 16,
    model: Annotated[Path | None, typer.Option(help=MODEL_HELP)] = None,
    codec: Annotated[Path | None, typer.Option(help=CODEC_HELP)] = None,
) -> None:
    """Speak a transcript (or a JSONL batch of requests) with the Higgs Audio LM; 24 kHz wav out."""
    from cadenza.core.audio import AudioError

    settings = _settings(seed, temperature, max_new_tokens, phoneme_guidance, best_of)
    if batch is not None:
        if out_dir is None:
            fail("--batch needs --out-dir")
        _generate_batch(batch, out_dir, batch_size, model, codec, settings)
        return
    if transcript is None or out is None:
        fail("give --transcript and --out (or --batch and --out-dir)")
    if stream and chunk_method is not None:
        fail("--stream speaks the transcript in one piece; drop --chunk-method or --stream")
    if stream and best_of > 1:
        fail("--stream says one take; drop --best-of or --stream")
    if os.path.isfile(transcript):  # not Path.is_file: a long transcript raises "file name too long" there
        transcript = Path(transcript).read_text()
    engine = _engine(model, codec)
    try:
        request = _request(engine, transcript, voice, ref_audio, ref_text, scene, chunk_method, settings,
                           ref_in_system)
        if stream:
            audio, usage = _stream(engine, request)
        else:
            from cadenza.higgs_audio.speak import speak

            response = speak(engine, request)
            audio, usage = response.audio, response.usage
    except (ValueError, AudioError) as exc:
        fail(str(exc))
    if audio is None or len(audio) == 0:
        fail("the model produced no audio (try another --seed or a higher --max-new-tokens)")
    _write(out, audio, engine.sampling_rate)
    typer.echo(_written(out, audio, engine.sampling_rate, usage))


def _stream(engine, request):
    """Stream a one-piece request: (its audio, its usage); print the time to first audio."""
    import time

    import numpy as np

    from cadenza.higgs_audio.speak import speak_stream

    start, first, pieces, finish_reason = time.perf_counter(), None, [], None
    for delta in speak_stream(engine, request):
        if delta.audio is not None and len(delta.audio):
            first = first if first is not None else time.perf_counter() - start
            pieces.append(delta.audio)
        finish_reason = delta.finish_reason
    if first is not None:
        typer.echo(f"first audio after {first * 1000:.0f} ms", err=True)
    return (np.concatenate(pieces) if pieces else None), {"finish_reason": finish_reason}


def _generate_batch(path: Path, out_dir: Path, batch_size: int, model, codec, settings) -> None:
    """Each valid line becomes DIR/<id>.wav (with `settings`, the line's seed); bad lines are reported and skipped
    (exit 1 if any)."""
    from dataclasses import replace

    from cadenza.core.audio import AudioError
    from cadenza.higgs_audio.speak import check_request, speak_batch

    if not path.is_file():
        fail(f"{path}: no such file")
    engine = _engine(model, codec)
    jobs, bad = [], 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item, dict) or not item.get("id") or not item.get("transcript"):
                raise ValueError("needs string fields 'id' and 'transcript'")
            request = _request(engine, item["transcript"], item.get("voice"), item.get("ref_audio"),
                               item.get("ref_text"), None, None, replace(settings, seed=item.get("seed")))
            check_request(engine, request)
            jobs.append((str(item["id"]), request))
        except (ValueError, AudioError, json.JSONDecodeError) as exc:
            typer.echo(f"{path}:{number}: skipped: {exc}", err=True)
            bad += 1
    for start in range(0, len(jobs), batch_size):
        group = jobs[start : start + batch_size]
        responses = speak_batch(engine, [request for _, request in group])
        for (name, _), response in zip(group, responses):
            if response.audio is None:
                typer.echo(f"{name}: no audio produced", err=True)
                bad += 1
                continue
            _write(out_dir / f"{name}.wav", response.audio, engine.sampling_rate)
            typer.echo(_written(out_dir / f"{name}.wav", response.audio, engine.sampling_rate, response.usage))
    if bad:
        fail(f"{bad} request(s) of {path} skipped or without audio")


def voices() -> None:
    """List the shipped voice presets (use with `cadenza speech generate --voice NAME`)."""
    from cadenza.higgs_audio.speak import voices as shipped_voices

    for name, wav in shipped_voices().items():
        typer.echo(f"{name}\t{wav.with_suffix('.txt').read_text().strip()}")


def _split_option(split: str) -> str:
    from cadenza.higgs_audio.tts_eval import EVAL_SPLITS

    if split not in EVAL_SPLITS:
        raise typer.BadParameter(f"{split!r} is not one of {', '.join(EVAL_SPLITS)}")
    return split


def evaluate(
    corpus: Annotated[Path, typer.Option(help="Speech corpus whose held-out split (--split) gives the sentences and speakers.")] = Path("data/speech"),
    split: Annotated[str, typer.Option(callback=_split_option, help="Held-out split to say: test (to report), or val (to choose settings such as --phoneme-guidance without tuning on test).")] = "test",
    joe: Annotated[int, typer.Option(min=0, help="Held-out sentences in the joe voice.")] = 30,
    per_voice: Annotated[int, typer.Option(min=0, help="Sentences per cloned voice (test-only speakers and Festival voices).")] = 4,
    festival: Annotated[bool, typer.Option(help="Also clone Festival voices (never trained on; needs text2wave).")] = True,
    batch_size: Annotated[int, typer.Option(min=1, help="Requests generated together.")] = 8,
    seed: Annotated[int, typer.Option(help="Sampling seed of the first sentence (sentence n: seed + n); another seed gives another sample of the same sentences.")] = 0,
    phoneme_guidance: Annotated[float | None, typer.Option(min=0, help=GUIDANCE_HELP)] = None,
    best_of: Annotated[int, typer.Option(min=1, help=BEST_OF_HELP)] = 1,
    decode_codebooks: Annotated[int | None, typer.Option(min=1, help="Decode only the first K generated codebooks (default: the model's choice, else all).")] = None,
    out: Annotated[Path | None, typer.Option(help="JSON report.")] = None,
    model: Annotated[Path | None, typer.Option(help=MODEL_HELP)] = None,
    codec: Annotated[Path | None, typer.Option(help=CODEC_HELP)] = None,
) -> None:
    """Word error rate (Whisper tiny.en), speaker similarity (resemblyzer) and DNSMOS quality on held-out
    sentences and voices."""
    from cadenza.higgs_audio.tts_eval import build_cases, evaluate_tts, format_report, write_report

    engine = _engine(model, codec, decode_codebooks)
    try:
        cases = build_cases(corpus, joe=joe, per_voice=per_voice, festival=festival, split=split)
    except (FileNotFoundError, ValueError) as exc:  # no corpus, or a manifest line that is not JSON
        fail(str(exc))
    try:
        report = evaluate_tts(engine, cases, batch_size=batch_size, seed=seed, phoneme_guidance=phoneme_guidance,
                              best_of=best_of)
    except ValueError as exc:  # a best_of this model cannot choose among
        fail(str(exc))
    typer.echo(format_report(report))
    if out is not None:
        write_report(report, out)
