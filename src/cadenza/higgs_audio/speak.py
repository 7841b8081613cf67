"""Text to speech on top of the engine: voices, cloning, dialogue, scenes and long-form chunking.

`speak(engine, transcript, ...)` turns a request into ChatML conversations, one per chunk, and joins the
chunks' codes into one waveform (decoded once, so chunk joins have no codec edge):

- a **voice** is a reference clip + its transcript: a shipped preset (`voices()`: NAME.wav + NAME.txt in
  `pretrained/voices`) or the user's own (`ref_audio` / `ref_text`), placed as a user/assistant pair or,
  with `ref_in_system`, in the system message;
- **dialogue**: `[SPEAKERn]` tags in the transcript, one reference per speaker (in the system message); a
  speaker without one gets a voice the model picks on its first turn, which then serves as its reference;
- **long form**: `chunk_method="word"` (paragraphs and sentences, at most `chunk_max_word_num` words a
  chunk) or `"speaker"` (one chunk per speaker turn); each chunk sees the reference and the last
  `buffer_size` generated chunks, which keeps the voice steady across chunks;
- no voice at all: the model picks one (and keeps it across chunks through the buffer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cadenza.higgs_audio.chatml import AudioContent, ChatMLSample, Message
from cadenza.higgs_audio.engine import GenerationSettings, HiggsAudioResponse, HiggsAudioServeEngine
from cadenza.higgs_audio.prompt import DEFAULT_SCENE, ChatMLDatasetSample, system_message, tokenize_sample
from cadenza.higgs_audio.text import TextTokenizer

VOICES_DIR = Path(__file__).resolve().parents[1] / "pretrained" / "voices"
SPEAKER_TAG = re.compile(r"\[SPEAKER(\d+)\]")


@dataclass
class Reference:
    """A voice to clone: its codes and what is said in them."""

    codes: np.ndarray
    text: str


@dataclass
class _Chunk:
    text: str
    speaker: int | None = None


def voices(directory: Path = VOICES_DIR) -> dict[str, Path]:
    """Shipped voice presets: name -> NAME.wav (each has a NAME.txt transcript beside it)."""
    return {p.stem: p for p in sorted(directory.glob("*.wav")) if p.with_suffix(".txt").is_file()}


def voice_reference(engine: HiggsAudioServeEngine, name: str) -> Reference:
    """The reference of a shipped voice preset; a clear error listing the presets for an unknown name."""
    presets = voices()
    if name not in presets:
        raise ValueError(f"unknown voice {name!r}; shipped voices: {', '.join(presets) or 'none'}")
    return file_reference(engine, presets[name], presets[name].with_suffix(".txt").read_text().strip())


def file_reference(engine: HiggsAudioServeEngine, audio: str | Path, text: str) -> Reference:
    """A reference from any audio file the codec reads (any rate, mono or stereo) and its transcript."""
    return Reference(engine.audio_codes(AudioContent(audio_url=str(audio))), text)


def split_turns(transcript: str) -> list[_Chunk]:
    """`[SPEAKERn] text ...` -> one chunk per speaker turn; untagged text is one turn of no speaker."""
    parts = SPEAKER_TAG.split(transcript)
    turns = [_Chunk(parts[0].strip())] if parts[0].strip() else []
    for number, text in zip(parts[1::2], parts[2::2]):
        if text.strip():
            turns.append(_Chunk(text.strip(), int(number)))
    return turns


def split_words(text: str, max_words: int) -> list[str]:
    """Paragraphs, then sentences, packed into chunks of at most `max_words` words (a longer sentence stands alone)."""
    chunks: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        current: list[str] = []
        for sentence in re.split(r"(?<=[.!?;])\s+", paragraph.strip()):
            words = sentence.split()
            if current and len(current) + len(words) > max_words:
                chunks.append(" ".join(current))
                current = []
            current += words
        if current:
            chunks.append(" ".join(current))
    return chunks


def plan_chunks(transcript: str, chunk_method: str | None, chunk_max_word_num: int = 200) -> list[_Chunk]:
    """The chunks a transcript is spoken in (None: everything at once)."""
    if not transcript.strip():
        raise ValueError("transcript is empty")
    if chunk_method is None:
        speakers = {int(n) for n in SPEAKER_TAG.findall(transcript)}
        return [_Chunk(transcript.strip(), min(speakers) if len(speakers) == 1 else None)]
    if chunk_method == "speaker":
        return split_turns(transcript)
    if chunk_method == "word":
        return [_Chunk(text, turn.speaker) for turn in split_turns(transcript)
                for text in split_words(turn.text, chunk_max_word_num)]
    raise ValueError(f"unknown chunk method {chunk_method!r}; expected 'word' or 'speaker'")


@dataclass
class SpeechRequest:
    """Everything about one thing to say (the CLI's and the HTTP server's request)."""

    transcript: str
    references: dict[int, Reference] = field(default_factory=dict)  # speaker number -> voice
    scene: str | None = DEFAULT_SCENE
    ref_in_system: bool = False
    chunk_method: str | None = None
    chunk_max_word_num: int = 200
    buffer_size: int = 2
    settings: GenerationSettings = field(default_factory=GenerationSettings)


def conversation(request: SpeechRequest, chunk: _Chunk, history: list[tuple[_Chunk, np.ndarray]],
                 tokenizer: TextTokenizer) -> ChatMLDatasetSample:
    """The prompt of one chunk: scene and voices, the recent chunks (chunk, codes), then the chunk's text."""
    speakers = sorted(request.references)
    dialogue = len(speakers) > 1 or (chunk.speaker is not None and bool(speakers) and chunk.speaker != speakers[0])
    codes: list[np.ndarray] = []
    messages: list[Message] = []
    if dialogue or request.ref_in_system:
        messages.append(system_message(request.scene, {n: AudioContent(audio_url=f"SPEAKER{n}") for n in speakers}))
        codes += [request.references[n].codes for n in speakers]
    else:
        messages.append(system_message(request.scene))
        for n in speakers:
            messages += [Message("user", request.references[n].text), Message("assistant", AudioContent(audio_url=f"SPEAKER{n}"))]
            codes.append(request.references[n].codes)
    for previous, audio in history[-request.buffer_size:] if request.buffer_size > 0 else []:
        messages += [Message("user", _said(previous, dialogue)), Message("assistant", AudioContent(audio_url="previous chunk"))]
        codes.append(audio)
    text = _said(chunk, dialogue)
    # An empty assistant turn ends the prompt in the open assistant header, as in training.
    messages += [Message("user", text), Message("assistant", "")]
    return tokenize_sample(ChatMLSample(messages), tokenizer, codes)


def _said(chunk: _Chunk, dialogue: bool) -> str:
    """A chunk's text as the user turn shows it: speaker-tagged in a dialogue prompt only (as in training)."""
    return chunk.text if chunk.speaker is None or not dialogue else f"[SPEAKER{chunk.speaker}] {chunk.text}"


def speak(engine: HiggsAudioServeEngine, request: SpeechRequest) -> HiggsAudioResponse:
    """Say a request's transcript, chunk by chunk, in its voices; one waveform out."""
    chunks = plan_chunks(request.transcript, request.chunk_method, request.chunk_max_word_num)
    request = replace(request, references=dict(request.references))  # voices picked here stay out of the caller's request
    history: list[tuple[_Chunk, np.ndarray]] = []
    pieces, texts, usage = [], [], {"prompt_tokens": 0, "completion_tokens": 0}
    for index, chunk in enumerate(chunks):
        settings = request.settings
        if settings.seed is not None:
            settings = GenerationSettings(**{**settings.__dict__, "seed": settings.seed + index})
        response = engine.generate_prompts([conversation(request, chunk, history, engine.tokenizer)], settings)[0]
        codes = response.generated_audio_tokens
        if chunk.speaker is not None and chunk.speaker not in request.references and codes.shape[1]:
            request.references[chunk.speaker] = Reference(codes, chunk.text)  # the voice the model picked
        history.append((chunk, codes))
        pieces.append(codes)
        texts.append(response.generated_text)
        for key in usage:
            usage[key] += response.usage.get(key, 0)
    codes = np.concatenate(pieces, axis=1)
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    audio = engine.audio_tokenizer.decode(codes) if codes.shape[1] else None
    return HiggsAudioResponse(audio, engine.sampling_rate, "".join(texts), codes, usage=usage)
