"""The prompt format of the audio LM, shared by training (dataset.py) and inference (speak.py, engine.py).

A conversation starts with the original's system message (an instruction, then a scene block that may hold a
voice reference per speaker); `tokenize_sample` turns a ChatML conversation and the codes of its audio into
a `ChatMLDatasetSample`: token ids with one placeholder per audio, the codes for them, and for a trained
transcript where each of its tokens is spoken (measured by the aligner, or a rough guess from durations).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cadenza.higgs_audio.chatml import AudioContent, ChatMLSample, Message, TextContent, prepare_chatml_sample, transcript_span
from cadenza.higgs_audio.text import TextTokenizer

SYSTEM_PROMPT = "Generate audio following instruction."
DEFAULT_SCENE = "Audio is recorded from a quiet room."


def system_message(scene: str | None = DEFAULT_SCENE, references: dict[int, AudioContent] | None = None) -> Message:
    """The original's system prompt: an instruction, then a scene block that may hold a reference clip per
    speaker number (`SPEAKERn: <audio>`), the way `--ref_audio_in_system_message` places them."""
    references = references or {}
    if not scene and not references:
        return Message("system", SYSTEM_PROMPT)
    content: list = [TextContent(f"{SYSTEM_PROMPT}\n\n<|scene_desc_start|>\n{scene or ''}")]
    for n, audio in sorted(references.items()):
        content += [TextContent(f"\n\nSPEAKER{n}: "), audio]
    content.append(TextContent("\n<|scene_desc_end|>"))
    return Message("system", content)


@dataclass
class ChatMLDatasetSample:
    """One conversation ready for the model: tokens with unexpanded audio placeholders + their codes."""

    input_ids: list[int]
    label_ids: list[int]
    audio_codes: list[np.ndarray] = field(default_factory=list)  # (n_q, T) per placeholder, in order
    transcript_span: tuple[int, int] | None = None  # tokens spoken by the trained audio (chatml.transcript_span)
    # the frame of the trained audio at which each of those tokens is spoken (-1: a token that takes no time)
    transcript_frames: list[float] | None = None


def tokenize_sample(sample: ChatMLSample, tokenizer: TextTokenizer, codes: list[np.ndarray],
                    frames: list[float] | None = None) -> ChatMLDatasetSample:
    """`prepare_chatml_sample` plus the codes of its audio contents (one array per placeholder). `frames`:
    where the transcript's tokens are spoken in the last audio (`aligner.align_corpus`); when not given (or
    not matching), a rough guess that spreads the tokens over the audio by their rough durations."""
    input_ids, label_ids, audio_contents, _ = prepare_chatml_sample(sample, tokenizer)
    if len(audio_contents) != len(codes):
        raise ValueError(f"sample has {len(audio_contents)} audio contents but {len(codes)} code arrays")
    span = transcript_span(input_ids, label_ids, tokenizer)
    if span and (frames is None or len(frames) != span[1] - span[0]):
        frames = rough_frames(tokenizer.durations(input_ids[span[0]:span[1]]), codes[-1].shape[1])
    return ChatMLDatasetSample(input_ids, label_ids, list(codes), span, frames if span else None)


def rough_frames(durations: list[float], n_frames: int) -> list[float]:
    """Tokens of these rough durations spread over n_frames: the frame at the middle of each (-1: no duration)."""
    d = np.asarray(durations, np.float64)
    if d.sum() <= 0:
        return [-1.0] * len(d)
    middles = (np.cumsum(d) - d / 2) / d.sum() * n_frames
    return np.where(d > 0, middles, -1.0).round(2).tolist()


def expanded_length(sample: ChatMLDatasetSample) -> int:
    """Positions of a sample once its placeholders are delay-pattern frames (T + n_q + 1 each)."""
    return len(sample.input_ids) + sum(codes.shape[1] + codes.shape[0] for codes in sample.audio_codes)
