"""The speech library as the server drives it: the only module of `cadenza.serve` that imports `higgs_audio`.

A request is said chunk by chunk as `speak.speak_batch` says it (chunks of at most `chunk_words` words, each
prompt with the voice and as many recent chunks as fit in the context), and the chunks of many requests
decode together in one `BatchStream`, whose steps give every request the audio that has just become final.

Adapter note: `speak` has batched (`speak_batch`, whole responses) and streamed (`speak_stream`, one request)
entry points, but no batched stream, which a server needs to answer many streams at once. So `SpeechPlan`
holds a `speak._Speech` (one request in progress) and asks `speak._fitting_prompt` for its next chunk's
prompt, and `BatchStream` walks the engine's private `_decode` the way `engine.stream_prompt` does (a delay
reverter and a streaming decoder per row), stopping a cancelled row by setting its finish reason. A public
batched stream in `speak`/`engine` would replace both classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from cadenza.higgs_audio import speak
from cadenza.higgs_audio.chatml import AudioContent
from cadenza.higgs_audio.delay import DelayReverter
from cadenza.higgs_audio.engine import SHIPPED_MODEL, GenerationSettings, HiggsAudioResponse, HiggsAudioServeEngine
from cadenza.higgs_audio.speak import DEFAULT_SCENE, Reference, SpeechRequest

__all__ = ["AudioContent", "BatchStream", "DEFAULT_SCENE", "GenerationSettings", "HiggsAudioServeEngine",
           "SpeechPlan", "default_model", "preset_voices"]


def default_model() -> Path | None:
    """The shipped speech model directory, or None while none is shipped."""
    return SHIPPED_MODEL if (SHIPPED_MODEL / "config.json").is_file() else None


def preset_voices() -> dict[str, Path]:
    """Shipped voice presets: name -> NAME.wav (NAME.txt beside it holds its transcript)."""
    return speak.voices()


class SpeechPlan:
    """One request being said chunk by chunk."""

    def __init__(self, engine: HiggsAudioServeEngine, transcript: str, voice: tuple[AudioContent, str] | None,
                 scene: str | None, settings: GenerationSettings, chunk_words: int):
        """`voice` = (reference clip, its transcript); ValueError for a request that cannot be said."""
        references = {} if voice is None else {0: Reference(engine.audio_codes(voice[0]), voice[1])}
        request = SpeechRequest(transcript, references, scene=scene, chunk_method="word",
                                chunk_max_word_num=chunk_words, settings=settings)
        self.engine, self.speech = engine, speak._Speech(engine, request)

    @property
    def done(self) -> bool:
        """Every chunk has been said."""
        return len(self.speech.responses) == len(self.speech.chunks)

    @property
    def usage(self) -> dict:
        """Prompt and completion tokens of the chunks said so far."""
        return {key: sum(r.usage.get(key, 0) for r in self.speech.responses) for key in ("prompt_tokens", "completion_tokens")}

    def next_prompt(self):
        """(prompt, settings) of the next chunk."""
        index, speech = len(self.speech.responses), self.speech
        prompt = speak._fitting_prompt(self.engine, speech.request, speech.chunks[index], speech.history)
        return prompt, speak._chunk_settings(speech.request.settings, index)

    def record(self, codes: np.ndarray, usage: dict) -> None:
        """Keep a said chunk's codes (the next chunks hear them) and its token counts."""
        self.speech.said(HiggsAudioResponse(None, self.engine.sampling_rate, "", codes, usage=usage))


class BatchStream:
    """Prompts decoded together; `steps()` yields, after every decode step, each row's newly final audio."""

    def __init__(self, engine: HiggsAudioServeEngine, prompts: list, settings: list[GenerationSettings]):
        self.engine = engine
        self._decode = engine._decode(prompts, settings)
        n_q = engine.config.audio_num_codebooks
        self._reverters = [DelayReverter(n_q, eager=True) for _ in prompts]
        self._decoders = [engine.audio_tokenizer.streaming_decoder() for _ in prompts]
        self._flushed = [False] * len(prompts)
        self._rows: list = []

    def steps(self, cancelled: Callable[[int], bool]) -> Iterator[list[np.ndarray | None]]:
        """Per step, a list with each row's new audio (None when it has none); a row for which
        `cancelled(i)` becomes true is finished at the next step and decodes no further."""
        for rows, fed in self._decode:
            self._rows = rows
            audio: list[np.ndarray | None] = []
            for i, (row, (kind, value)) in enumerate(zip(rows, fed)):
                piece = None
                if kind == "audio" and row.finish_reason is None:
                    frames = self._reverters[i].push(value)
                    if frames.shape[1]:
                        piece = self._decoders[i].push(self.engine._clip(frames))
                if row.finish_reason is not None and not self._flushed[i]:
                    self._flushed[i] = True
                    piece = self._decoders[i].flush()
                audio.append(piece if piece is not None and len(piece) else None)
            yield audio
            for i, row in enumerate(rows):
                if row.finish_reason is None and cancelled(i):
                    row.finish_reason = "cancelled"

    def codes(self, i: int) -> np.ndarray:
        """Row i's generated audio codes (n_q, T)."""
        return self.engine.reverted_codes(self._rows[i])

    def usage(self, i: int) -> dict:
        """Row i's prompt and completion token counts."""
        row = self._rows[i]
        return {"prompt_tokens": row.prompt_len, "completion_tokens": len(row.text_tokens) + len(row.columns)}
