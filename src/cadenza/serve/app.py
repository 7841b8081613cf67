"""`create_app`: the FastAPI app of `cadenza serve` (OpenAI-compatible speech, music, web UI, health, metrics)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cadenza.serve import chat, errors, music, speech
from cadenza.serve.middleware import APIKeyMiddleware, BodyLimitMiddleware, MetricsMiddleware
from cadenza.serve.speech_engine import HiggsAudioServeEngine
from cadenza.serve.state import ServerConfig, ServerState

UI_PAGE = Path(__file__).parent / "static" / "index.html"


def create_app(config: ServerConfig | None = None, engine: HiggsAudioServeEngine | None = None) -> FastAPI:
    """The server's app; `engine` overrides loading `config.speech_model` (tests pass a tiny one)."""
    config = config or ServerConfig()
    torch.set_num_threads(config.threads)
    state = ServerState(config, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        yield
        state.stop()

    app = FastAPI(title="cadenza", summary="Speech (OpenAI-compatible) and music generation", lifespan=lifespan)
    app.state.cadenza = state
    errors.install(app)
    for module in (speech, chat, music):
        app.include_router(module.router)

    @app.get("/health")
    async def health() -> dict:
        """Liveness and what is loaded."""
        return {"status": "ok", "speech_model": state.speech is not None,
                "queue": {"speech": state.speech.depth if state.speech else 0, "music": state.music.depth}}

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics: requests, latency, time to first audio, audio seconds, queue depth."""
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict:
        """The models this server answers for."""
        served = [speech.SPEECH_MODELS[0]] if state.speech else []
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "cadenza"}
                                           for name in (*served, music.MUSIC_MODEL)]}

    @app.get("/", include_in_schema=False)
    async def ui(request: Request) -> FileResponse:
        """The web UI: speak and compose."""
        return FileResponse(UI_PAGE, media_type="text/html")

    # Outermost last: metrics see every answer, including 401 and 413.
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=config.api_key)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
