"""What one server holds: its settings, the speech worker, the music service, the voices and the metrics."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cadenza.serve.errors import APIError
from cadenza.serve.middleware import Metrics
from cadenza.serve.music import MusicService
from cadenza.serve.speech_engine import DEFAULT_SCENE, AudioContent, HiggsAudioServeEngine, default_model, preset_voices
from cadenza.serve.voices import VoiceStore
from cadenza.serve.worker import SpeechWorker


def default_voices_dir() -> Path:
    """Where uploaded voices are kept unless told otherwise: $XDG_DATA_HOME/cadenza/voices."""
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "cadenza" / "voices"


@dataclass
class ServerConfig:
    """Settings of a server (the `cadenza serve` options)."""

    speech_model: Path | None = None  # None: the shipped speech model, if one is shipped
    speech: bool = True  # False: no speech model at all (a music-only server; speech routes answer 503)
    music_model: Path | None = None  # None: the shipped music generator
    voices_dir: Path = field(default_factory=default_voices_dir)
    api_key: str | None = None
    max_queue: int = 64  # speech requests waiting; more are answered 503
    max_batch: int = 16  # speech requests decoded together
    batch_window: float = 0.02  # seconds a new batch waits for more requests
    music_queue: int = 4
    timeout: float = 300.0  # seconds a request may take
    max_body_bytes: int = 16 << 20
    max_input_chars: int = 4096
    max_voice_bytes: int = 10 << 20  # an uploaded reference clip
    max_voice_seconds: float = 30.0
    max_new_tokens: int = 1024  # decode steps per chunk of text (25 audio frames a second)
    chunk_words: int = 40  # long text is spoken in chunks of at most this many words
    threads: int = 1  # torch threads


class ServerState:
    """The objects behind the routes (one per app)."""

    def __init__(self, config: ServerConfig, engine: HiggsAudioServeEngine | None = None):
        self.config = config
        self.metrics = Metrics()
        self.voices = VoiceStore(preset_voices(), config.voices_dir, config.max_voice_bytes,
                                 max_seconds=config.max_voice_seconds)
        self.default_scene = DEFAULT_SCENE
        model = (config.speech_model or default_model()) if config.speech else None
        if engine is None and model is not None:
            engine = HiggsAudioServeEngine(model)
        self.speech = None if engine is None else SpeechWorker(
            engine, config.max_queue, config.max_batch, config.chunk_words, config.batch_window,
            on_audio=self.metrics.audio_seconds.inc)
        self.music = MusicService(config.music_model, config.music_queue, config.timeout)
        self.metrics.queue.labels("speech").set_function(lambda: self.speech.depth if self.speech else 0)
        self.metrics.queue.labels("music").set_function(lambda: self.music.depth)

    def start(self) -> None:
        """Start the speech worker."""
        if self.speech is not None:
            self.speech.start()

    def stop(self) -> None:
        """Stop the workers."""
        if self.speech is not None:
            self.speech.stop()
        self.music.close()

    def speech_worker(self) -> SpeechWorker:
        """The speech worker; 503 when the server runs without a speech model."""
        if self.speech is None:
            raise APIError(503, "no speech model is loaded: start the server with --speech-model DIR",
                           code="model_not_loaded")
        return self.speech

    def voice_reference(self, name: str | None) -> tuple[AudioContent, str] | None:
        """(reference clip, transcript) of a voice by name; None lets the model pick a voice."""
        if not name:
            return None
        voice = self.voices.get(name)
        return AudioContent(audio_url=str(voice.audio)), voice.transcript
