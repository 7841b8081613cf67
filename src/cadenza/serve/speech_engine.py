"""The speech library as the server uses it: the one module of `cadenza.serve` that imports `higgs_audio`.

A request is a `speak.Speech`, said chunk by chunk (at most `chunk_words` words a chunk, fewer when its
`max_new_tokens` cannot say them or they do not fit in the context; each prompt with the voice and the recent
chunks that fit in the context); the next chunks of many requests decode together in
the engine's batched stream (`stream_prompts`), whose deltas carry each request's audio as it becomes final.
"""

from __future__ import annotations

from pathlib import Path

from cadenza.higgs_audio.chatml import AudioContent
from cadenza.higgs_audio.engine import SHIPPED_MODEL, GenerationSettings, HiggsAudioServeEngine
from cadenza.higgs_audio.speak import DEFAULT_SCENE, Reference, Speech, SpeechRequest, voices

__all__ = ["AudioContent", "DEFAULT_SCENE", "GenerationSettings", "HiggsAudioServeEngine", "Speech",
           "default_model", "new_speech", "preset_voices"]


def default_model() -> Path | None:
    """The shipped speech model directory, or None while none is shipped."""
    return SHIPPED_MODEL if (SHIPPED_MODEL / "config.json").is_file() else None


def preset_voices() -> dict[str, Path]:
    """Shipped voice presets: name -> NAME.wav (NAME.txt beside it holds its transcript)."""
    return voices()


def new_speech(engine: HiggsAudioServeEngine, transcript: str, voice: tuple[AudioContent, str] | None,
               scene: str | None, settings: GenerationSettings, chunk_words: int) -> Speech:
    """A request to say, in `voice` = (reference clip, its transcript) or one the model picks; ValueError for a
    request that cannot be said."""
    references = {} if voice is None else {0: Reference(engine.audio_codes(voice[0]), voice[1])}
    request = SpeechRequest(transcript, references, scene=scene, chunk_method="word", chunk_max_word_num=chunk_words,
                            settings=settings)
    return Speech(engine, request)
