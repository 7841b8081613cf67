"""`cadenza serve`: the HTTP server (OpenAI-compatible speech, music API, web UI)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cadenza.cli.common import fail


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar="CADENZA_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1 routes.")] = None,
    speech_model: Annotated[Path | None, typer.Option(help="Speech model directory (from `cadenza speech train` or `export`; default: the shipped preview, cadenza/pretrained/higgs_audio_small).")] = None,
    speech: Annotated[bool, typer.Option("--speech/--no-speech", help="--no-speech: serve music only, with no speech model loaded (speech routes answer 503).")] = True,
    music_model: Annotated[Path | None, typer.Option(help="Music generator directory (default: the shipped one).")] = None,
    voices_dir: Annotated[Path | None, typer.Option(help="Where uploaded voices are kept (default: ~/.local/share/cadenza/voices).")] = None,
    max_queue: Annotated[int, typer.Option(help="Speech requests that may wait; more are answered 503.")] = 64,
    max_batch: Annotated[int, typer.Option(help="Speech requests decoded together.")] = 16,
    max_new_tokens: Annotated[int, typer.Option(help="Decode steps per chunk of text (25 audio frames = 1 s).")] = 1024,
    timeout: Annotated[float, typer.Option(help="Seconds a request may take.")] = 300.0,
    threads: Annotated[int, typer.Option(help="Torch threads.")] = 1,
    replicas: Annotated[int, typer.Option(min=1, help="Run N replicas (one model copy each) behind Ray Serve's HTTP proxy.")] = 1,
) -> None:
    """Serve speech (OpenAI's /v1/audio/speech, voices, audio chat completions), music and a web UI at /."""
    import uvicorn

    from cadenza.serve import ServerConfig, create_app

    config = ServerConfig(speech_model=speech_model, speech=speech, music_model=music_model, api_key=api_key,
                          max_queue=max_queue,
                          max_batch=max_batch, max_new_tokens=max_new_tokens, timeout=timeout, threads=threads)
    if voices_dir is not None:
        config.voices_dir = voices_dir
    if replicas > 1:
        from cadenza.serve.replicas import serve_replicas

        serve_replicas(config, replicas, host, port)
        return
    try:
        app = create_app(config)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if app.state.cadenza.speech is None:
        typer.echo("no speech model: speech routes answer 503 (give --speech-model DIR, or drop --no-speech)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
