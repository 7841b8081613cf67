"""Text to speech on top of the engine: requests -> prompts, for one request, a batch, or a stream.

    response = speak(engine, SpeechRequest("Hello there.", {0: voice_reference(engine, "joe")}))
    responses = speak_batch(engine, [request, ...])     # one batched decode; one response per request
    for delta in speak_stream(engine, request): play(delta.audio)
    speech = Speech(engine, request); prompt, settings = speech.next_prompt()  # to drive the engine yourself

A request becomes ChatML conversations, one per chunk, and the chunks' codes are joined into one waveform
(decoded once, so chunk joins have no codec edge):

- a **voice** is a reference clip + its transcript: a shipped preset (`voices()`: NAME.wav + NAME.txt in
  `pretrained/voices`) or the user's own (`ref_audio` / `ref_text`), placed as a user/assistant pair or,
  with `ref_in_system`, in the system message;
- **dialogue**: `[SPEAKERn]` tags in the transcript, one reference per speaker (in the system message); a
  speaker without one gets a voice the model picks on its first turn, which then serves as its reference;
- **long form**: `chunk_method="word"` (paragraphs and sentences, at most `chunk_max_word_num` words a
  chunk) or `"speaker"` (one chunk per speaker turn); each chunk sees the reference and the last
  `buffer_size` generated chunks that fit in the model's context, which keeps the voice steady across
  chunks. Without a chunk method, a transcript said in one piece unless it cannot be: a prompt longer than
  the model's context, or more words than `max_new_tokens` decode steps can say at SECONDS_PER_WORD; then
  it is said in word chunks that can. A text that cannot be said even so (a turn too long for its steps, a
  stream) is refused with an error naming its length, the limit and the option to change: never cut;
- no voice at all: the model picks one (and keeps it across chunks through the buffer).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cadenza.higgs_audio.chatml import AudioContent, ChatMLSample, Message
from cadenza.higgs_audio.engine import (GenerationSettings, HiggsAudioResponse, HiggsAudioServeEngine,
                                        HiggsAudioStreamerDelta)
from cadenza.higgs_audio.prompt import DEFAULT_SCENE, ChatMLDatasetSample, system_message, tokenize_sample
from cadenza.higgs_audio.text import TextTokenizer

VOICES_DIR = Path(__file__).resolve().parents[1] / "pretrained" / "voices"
SPEAKER_TAG = re.compile(r"\[SPEAKER(\d+)\]")
# How long a word takes to say, for deciding what fits in max_new_tokens decode steps: an unhurried reading
# pace of 150 words a minute (the corpus voices speak at 0.26-0.3 s a word). The original's defaults assume
# about as much: chunks of at most 200 words in 2048 steps (82 s).
SECONDS_PER_WORD = 0.4


@dataclass
class Reference:
    """A voice to clone: its codes and what is said in them."""

    codes: np.ndarray
    text: str


@dataclass
class Chunk:
    """A piece of a transcript said in one generation, and its speaker number (None: untagged)."""

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


def split_turns(transcript: str) -> list[Chunk]:
    """`[SPEAKERn] text ...` -> one chunk per speaker turn; untagged text is one turn of no speaker."""
    parts = SPEAKER_TAG.split(transcript)
    turns = [Chunk(parts[0].strip())] if parts[0].strip() else []
    for number, text in zip(parts[1::2], parts[2::2]):
        if text.strip():
            turns.append(Chunk(text.strip(), int(number)))
    return turns


def split_words(text: str, max_words: int) -> list[str]:
    """Paragraphs, then sentences, packed into chunks of at most `max_words` words; a longer sentence is cut
    after its commas and colons, and a clause still longer between words."""
    chunks: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        current: list[str] = []
        for words in _word_runs(paragraph, max_words):
            if current and len(current) + len(words) > max_words:
                chunks.append(" ".join(current))
                current = []
            current += words
        if current:
            chunks.append(" ".join(current))
    return chunks


def _word_runs(paragraph: str, max_words: int) -> Iterator[list[str]]:
    """The words of a paragraph's sentences, in runs of at most `max_words` (see `split_words`)."""
    for sentence in re.split(r"(?<=[.!?;])\s+", paragraph.strip()):
        clauses = [sentence] if len(sentence.split()) <= max_words else re.split(r"(?<=[,:])\s+", sentence)
        for clause in clauses:
            words = clause.split()
            for start in range(0, len(words), max_words):
                yield words[start : start + max_words]


def plan_chunks(transcript: str, chunk_method: str | None, chunk_max_word_num: int = 200) -> list[Chunk]:
    """The chunks a transcript is spoken in (None: everything at once)."""
    if not transcript.strip():
        raise ValueError("transcript is empty")
    if chunk_method is None:
        speakers = {int(n) for n in SPEAKER_TAG.findall(transcript)}
        return [Chunk(transcript.strip(), min(speakers) if len(speakers) == 1 else None)]
    if chunk_method == "speaker":
        return split_turns(transcript)
    if chunk_method == "word":
        return [Chunk(text, turn.speaker) for turn in split_turns(transcript)
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


def conversation(request: SpeechRequest, chunk: Chunk, history: list[tuple[Chunk, np.ndarray]],
                 tokenizer: TextTokenizer) -> ChatMLDatasetSample:
    """The prompt of one chunk: scene and voices, the earlier chunks given (chunk, codes), then the chunk's text."""
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
    for previous, audio in history:
        messages += [Message("user", _said(previous, dialogue)), Message("assistant", AudioContent(audio_url="previous chunk"))]
        codes.append(audio)
    text = _said(chunk, dialogue)
    # An empty assistant turn ends the prompt in the open assistant header, as in training.
    messages += [Message("user", text), Message("assistant", "")]
    return tokenize_sample(ChatMLSample(messages), tokenizer, codes)


def _said(chunk: Chunk, dialogue: bool) -> str:
    """A chunk's text as the user turn shows it: speaker-tagged in a dialogue prompt only (as in training)."""
    return chunk.text if chunk.speaker is None or not dialogue else f"[SPEAKER{chunk.speaker}] {chunk.text}"


def speakable_words(engine: HiggsAudioServeEngine, settings: GenerationSettings) -> int:
    """How many words `settings.max_new_tokens` decode steps can say at SECONDS_PER_WORD."""
    return int(_audio_frames(engine, settings) / _frames_per_word(engine))


def _audio_frames(engine: HiggsAudioServeEngine, settings: GenerationSettings) -> int:
    """Audio frames in `max_new_tokens` decode steps (the delay pattern's staircase and close take n_q + 1)."""
    return max(0, settings.max_new_tokens - engine.config.audio_num_codebooks - 1)


def _audio_seconds(engine: HiggsAudioServeEngine, settings: GenerationSettings) -> float:
    return _audio_frames(engine, settings) / engine.audio_tokenizer.tps


def _frames_per_word(engine: HiggsAudioServeEngine) -> float:
    return SECONDS_PER_WORD * engine.audio_tokenizer.tps


def steps_to_say(engine: HiggsAudioServeEngine, words: int) -> int:
    """The fewest `max_new_tokens` that say `words` words at SECONDS_PER_WORD."""
    return math.ceil(words * _frames_per_word(engine)) + engine.config.audio_num_codebooks + 1


def plan_request(engine: HiggsAudioServeEngine, request: SpeechRequest) -> list[Chunk]:
    """The chunks a request is said in, each checked to fit its decode steps and the model's context: those of
    its chunk method; without one, the whole transcript if it fits, else word chunks (long form). Word chunks
    are no longer than `max_new_tokens` can say, and shorter while one does not fit in the context. ValueError
    naming the text, its length, the limit and what to change for a chunk that cannot be said; also for an
    empty transcript or an unknown chunk method."""
    max_words = min(request.chunk_max_word_num, speakable_words(engine, request.settings))
    if max_words == 0:
        raise ValueError(f"max_new_tokens {request.settings.max_new_tokens} holds {_audio_seconds(engine, request.settings):.2f} s, "
                         f"too little to say a word ({SECONDS_PER_WORD} s): give at least {steps_to_say(engine, 1)}")
    if request.chunk_method is None:
        whole = plan_chunks(request.transcript, None)
        if not _unsayable(engine, request, whole[0]):
            return whole
    method = request.chunk_method or "word"
    while True:
        chunks = plan_chunks(request.transcript, method, max_words)
        unsayable = next(((c, problem) for c in chunks if (problem := _unsayable(engine, request, c))), None)
        if unsayable is None:
            return chunks
        if method != "word" or max_words == 1:
            other = ", or use chunk method 'word'" if method == "speaker" else ""
            raise ValueError(f"{_described(unsayable[0])} cannot be said: {unsayable[1]}{other}")
        max_words -= 1  # a chunk and its decode steps do not fit in the context: shorter chunks


def _unsayable(engine: HiggsAudioServeEngine, request: SpeechRequest, chunk: Chunk) -> str | None:
    """Why a chunk cannot be said in one generation, and what to change (more words than its decode steps
    can say, or a prompt that with them does not fit in the model's context), or None if it can."""
    words, settings = len(chunk.text.split()), request.settings
    if words > speakable_words(engine, settings):
        return (f"{words} words take about {words * SECONDS_PER_WORD:.1f} s to say ({SECONDS_PER_WORD} s a word), but "
                f"max_new_tokens {settings.max_new_tokens} holds {_audio_seconds(engine, settings):.2f} s: "
                f"give at least {steps_to_say(engine, words)}")
    try:
        engine.check_fits(conversation(request, chunk, [], engine.tokenizer), settings)
    except ValueError as exc:
        return f"{exc}: give a lower max_new_tokens or a shorter voice reference"
    return None


def _described(chunk: Chunk) -> str:
    """A chunk named in an error: its start and its length."""
    shown = chunk.text if len(chunk.text) <= 40 else chunk.text[:40] + "..."
    words = len(chunk.text.split())
    return f"text {shown!r} ({len(chunk.text)} characters, {words} word{'' if words == 1 else 's'})"


def check_request(engine: HiggsAudioServeEngine, request: SpeechRequest) -> None:
    """ValueError saying what is wrong with a request that cannot be said (see `plan_request`)."""
    plan_request(engine, request)


def first_prompt(engine: HiggsAudioServeEngine, request: SpeechRequest) -> ChatMLDatasetSample:
    """The prompt of a request's first chunk (its whole transcript unless chunked), for driving the engine
    directly; ValueError as `check_request`."""
    return Speech(engine, request).next_prompt()[0]


def speak(engine: HiggsAudioServeEngine, request: SpeechRequest) -> HiggsAudioResponse:
    """Say a request's transcript, chunk by chunk, in its voices; one waveform out."""
    return speak_batch(engine, [request])[0]


def speak_batch(engine: HiggsAudioServeEngine, requests: list[SpeechRequest]) -> list[HiggsAudioResponse]:
    """Say many requests in one batched decode, one response each; long-form requests are said chunk by
    chunk, their k-th chunks decoded together. ValueError before any decoding for a request that cannot be
    said (see `check_request`)."""
    speeches = [Speech(engine, request) for request in requests]
    while todo := [s for s in speeches if not s.done]:
        prompts, settings = zip(*(s.next_prompt() for s in todo))
        for speech, response in zip(todo, engine.generate_prompts(list(prompts), list(settings), decode_audio=False)):
            speech.said(response)
    return engine.decode_audio([s.response() for s in speeches])


def speak_stream(engine: HiggsAudioServeEngine, request: SpeechRequest) -> Iterator[HiggsAudioStreamerDelta]:
    """Say a request in one piece as a stream: a delta per decode step, whose `audio` is playable 24 kHz audio
    as soon as it is final (the pieces join to the audio of `speak`); the last delta has the finish reason.
    A request it cannot say in one piece (a chunk method, a transcript too long) raises ValueError at once.
    (Many streams at once: `Speech.next_prompt` for each, then `engine.stream_prompts`.)"""
    if request.chunk_method is not None:
        raise ValueError("a stream says its transcript in one piece: no chunk method")
    speech = Speech(engine, request)
    if len(speech.chunks) > 1:
        whole = plan_chunks(request.transcript, None)[0]
        raise ValueError(f"{_described(whole)} cannot be streamed in one piece: {_unsayable(engine, request, whole)}, "
                         "or say it without streaming (it is then said in chunks)")
    return engine.stream_prompt(speech.next_prompt()[0], request.settings)


class Speech:
    """One request being said, chunk by chunk: `next_prompt()` gives the next chunk's prompt and settings, and
    `said(response)` keeps what the model said, which the following chunks hear."""

    def __init__(self, engine: HiggsAudioServeEngine, request: SpeechRequest):
        """ValueError for a request that cannot be said (see `plan_request`)."""
        self.engine = engine
        self.chunks = plan_request(engine, request)
        self.request = replace(request, references=dict(request.references))  # voices picked here stay out of the caller's request
        self.history: list[tuple[Chunk, np.ndarray]] = []
        self.responses: list[HiggsAudioResponse] = []

    @property
    def done(self) -> bool:
        """Every chunk has been said."""
        return len(self.responses) == len(self.chunks)

    def next_prompt(self) -> tuple[ChatMLDatasetSample, GenerationSettings]:
        """The next chunk's prompt and settings (a seeded request gives its chunks seeds seed, seed + 1, ...)."""
        index, settings = len(self.responses), self.request.settings
        if settings.seed is not None:
            settings = replace(settings, seed=settings.seed + index)
        return _fitting_prompt(self.engine, self.request, self.chunks[index], self.history), settings

    def said(self, response: HiggsAudioResponse) -> None:
        """Keep the response to the last prompt; the voice the model picked for a speaker without one serves as
        that speaker's reference from then on."""
        chunk, codes = self.chunks[len(self.responses)], response.generated_audio_tokens
        if chunk.speaker is not None and chunk.speaker not in self.request.references and codes.shape[1]:
            self.request.references[chunk.speaker] = Reference(codes, chunk.text)
        self.history.append((chunk, codes))
        self.responses.append(response)

    def response(self) -> HiggsAudioResponse:
        """The whole request's response, its audio not yet decoded: the chunks' codes joined, with the number of
        chunks in its usage (a single chunk's response as it is)."""
        if len(self.responses) == 1:
            return self.responses[0]
        codes = np.concatenate([r.generated_audio_tokens for r in self.responses], axis=1)
        usage = {key: sum(r.usage.get(key, 0) for r in self.responses) for key in ("prompt_tokens", "completion_tokens")}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        cut = any(r.usage.get("finish_reason") == "length" for r in self.responses)
        usage["finish_reason"] = "length" if cut else "stop"
        usage["chunks"] = len(self.responses)
        return HiggsAudioResponse(None, self.engine.sampling_rate, "".join(r.generated_text for r in self.responses),
                                  codes, usage=usage)


def _fitting_prompt(engine: HiggsAudioServeEngine, request: SpeechRequest, chunk: Chunk,
                    history: list[tuple[Chunk, np.ndarray]]) -> ChatMLDatasetSample:
    """`conversation` with as many of the recent chunks (at most `buffer_size`) as fit in the model's context
    beside the chunk (which fits alone: `plan_request` checked it)."""
    recent = history[-request.buffer_size:] if request.buffer_size > 0 else []
    while True:
        prompt = conversation(request, chunk, recent, engine.tokenizer)
        try:
            engine.check_fits(prompt, request.settings)
            return prompt
        except ValueError:
            if not recent:
                raise
            recent = recent[1:]
