"""HiggsAudioServeEngine: ChatML in, 24 kHz speech out - one request, a batch, or a stream.

    engine = HiggsAudioServeEngine()                       # the shipped preview (or a model directory)
    response = engine.generate(sample, seed=0)             # HiggsAudioResponse(audio, sampling_rate, ...)
    responses = engine.generate_batch([s1, s2, ...])       # many requests in one batched decode
    async for delta in engine.generate_delta_stream(sample): play(delta.audio)
    for deltas in engine.stream_prompts(prompts): ...     # many streams decoded together, a delta each per step

One decode step feeds one position per request: a text token, or one delayed frame of all codebooks
(`delay.py`). Every request in a batch has its own KV-cache row (left padded), its own mode (text or
audio), its own seeded random generator and its own repetition-aware sampling history, so a request
gives the same result alone or in a batch (up to float rounding). Streamed deltas carry decoded audio:
delayed frames are reverted incrementally and decoded chunk by chunk (the due chunks of a batch's rows in one
codec call), and the chunks concatenate to the audio of `generate` (the original streamed raw frames no client
could decode, its #135).

Speed: the prompt is prefilled by `HiggsAudioModel.forward`. Prompts of a batch that begin alike (requests
cloning one voice) share that prefix: computed once, read once per step. The prefix up to the end of the
voice reference is also kept for later requests, so a voice's reference is read once, not per request
(prefill.py).
Every step after the prefill is a `HiggsAudioDecoder.step` (fast_decoder.py) into the same KV cache, and all
rows are sampled together by a `BatchSampler` (sampler.py). A stream releases each frame with the column
that completes it. A batch's codes are decoded to audio together: one codec call for all rows of one length.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from cadenza.core.fast_decoder import fastest_weight_dtype
from cadenza.core.sampling import make_generator
from cadenza.higgs_audio.chatml import AudioContent, ChatMLSample, last_user_text, prepare_chatml_sample
from cadenza.higgs_audio.codec.api import codec_fingerprint, load_audio_tokenizer
from cadenza.higgs_audio.configuration import TOKENIZER_FILE
from cadenza.higgs_audio.delay import DelayReverter, revert_delay_pattern
from cadenza.higgs_audio.fast_decoder import HiggsAudioDecoder
from cadenza.higgs_audio.guidance import PhonemeGuide
from cadenza.higgs_audio.inputs import expand_sample
from cadenza.higgs_audio.modeling import HiggsAudioModel
from cadenza.higgs_audio.prefill import PrefixSharingPrefill
from cadenza.higgs_audio.prompt import ChatMLDatasetSample, expanded_length
from cadenza.higgs_audio.sampler import BatchSampler
from cadenza.higgs_audio.takes import TAKE_SEED_STRIDE, TakeScorer
from cadenza.higgs_audio.text import TextTokenizer, sounding

CODES_CACHE_SIZE = 64  # reference clips whose codes an engine keeps
# A row may not end before its transcript pointer reaches the last token, unless it has spoken this many frames
# per sounding token (3x the corpus's mean pace of 1.32): a pointer that stalls ends, not runs to max_new_tokens.
MAX_FRAMES_PER_TOKEN = 4
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "pretrained" / "higgs_audio_small"


@dataclass
class GenerationSettings:
    """Sampling knobs of one request (the original's `generate` arguments), and how a stream chunks its audio."""

    max_new_tokens: int = 1024
    temperature: float = 0.7
    top_k: int | None = None
    top_p: float | None = 0.95
    stop_strings: list[str] | None = None
    force_audio_gen: bool = True
    ras_win_len: int = 7
    ras_win_max_num_repeat: int = 2
    seed: int | None = None
    # Weight of the codec's phoneme head in sampling codebook 0 (guidance.py), for a model with a transcript
    # pointer and a codec with a phoneme head; 0: plain sampling. 4 was the best of {0, 2, 4, 8} on held-out
    # sentences at speech_v3 step 2,400 (docs/training.md).
    phoneme_guidance: float = 4.0
    # Takes decoded per request, of which the one its transcript is read from most easily is kept (takes.py); a
    # stream says one take. Needs a model with a transcript pointer and a codec with a phoneme head.
    best_of: int = 1
    # A stream's audio comes in chunks of this many frames (25 a second). Each chunk's decode also reads the
    # codec's lookahead (10 frames for the shipped one) on both sides: 1-frame chunks cost the codec ~4x more.
    stream_chunk_frames: int = 5
    stream_first_chunk_frames: int = 1  # a smaller first chunk: first audio as soon as a frame is final


@dataclass
class HiggsAudioResponse:
    """What `generate` returns (the original's fields)."""

    audio: np.ndarray | None
    sampling_rate: int
    generated_text: str
    generated_audio_tokens: np.ndarray  # (n_q, T) reverted codes
    generated_text_tokens: list[int] = field(default_factory=list)
    usage: dict = field(default_factory=dict)


@dataclass
class HiggsAudioStreamerDelta:
    """One streamed step: new text, the delayed audio frame fed, and any audio that became final."""

    text: str = ""
    text_tokens: list[int] = field(default_factory=list)
    audio_tokens: np.ndarray | None = None  # (n_q,) delayed frame, as the original streams
    audio: np.ndarray | None = None  # float32 24 kHz samples ready to play (decodable, unlike the original's)
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" on the last delta
    response: HiggsAudioResponse | None = None  # on the last delta: codes, text and usage of the whole stream


@dataclass
class _Row:
    """Decoding state of one request in a batch."""

    settings: GenerationSettings
    prompt_len: int
    generator: torch.Generator | None
    audio: bool = False  # feeding delayed frames (else text tokens)
    column: int = 0  # delayed column last fed in audio mode
    eos_column: int | None = None  # where codebook 0 ended
    text_tokens: list[int] = field(default_factory=list)
    columns: list[torch.Tensor] = field(default_factory=list)
    finish_reason: str | None = None
    reading: list[int] = field(default_factory=list)  # the transcript's sounding tokens (transcript pointer)
    pointer: int = 0  # index in `reading` of the token being spoken


class HiggsAudioServeEngine:
    """Loads the audio LM, its text tokenizer and the audio tokenizer once; serves requests."""

    def __init__(self, model_path: str | Path | None = None, audio_tokenizer_path: str | Path | None = None,
                 device: str = "cpu", dtype: torch.dtype = torch.float32,
                 decode_weight_dtype: torch.dtype | None = None, decode_codebooks: int | None = None):
        """dtype: of the model (the prompt's prefill); decode_weight_dtype: how the decoding steps store the
        weights (float16 halves the bytes a step reads; products stay float32, see fast_decoder.py); None takes
        whichever this CPU multiplies faster (`fastest_weight_dtype`: on an AVX512-FP16 Xeon a decode step of the
        12.6M model took 2.1 ms with float32 weights and 3.4 ms with float16 at batch 1, 7.4 vs 9.2 at batch 16).
        decode_codebooks: how many of the generated codebooks (the first K) become audio; None: the model's
        `decode_codebooks` (all when unset). Responses keep every generated codebook."""
        if model_path is None and not (SHIPPED_MODEL / "config.json").is_file():
            raise FileNotFoundError(f"the shipped speech model is missing from this install ({SHIPPED_MODEL}): "
                                    "give the directory of one (`cadenza speech train`)")
        model_path = Path(model_path or SHIPPED_MODEL)
        if not model_path.is_dir():
            raise FileNotFoundError(f"{model_path}: no such directory")
        if not (model_path / "config.json").is_file():
            raise FileNotFoundError(f"{model_path}: not a Higgs Audio model directory (train one: `cadenza speech train`)")
        self.device = torch.device(device)
        self.model = HiggsAudioModel.from_pretrained(model_path).to(self.device, dtype).eval()
        self.config = self.model.config
        if decode_weight_dtype is None:
            hidden = self.config.hidden_size
            decode_weight_dtype = fastest_weight_dtype(3 * hidden, hidden, widen=True)
        self.decoder = HiggsAudioDecoder(self.model, weight_dtype=decode_weight_dtype)
        # prefill(expanded prompts, longest) -> (KV cache, mask, hidden, shared prefix): prefill.py
        self.prefill = PrefixSharingPrefill(self.model, self.device)
        self.tokenizer = TextTokenizer.load(model_path / TOKENIZER_FILE)
        self.audio_tokenizer = load_audio_tokenizer(audio_tokenizer_path, device=device)
        _check_codec(self.config, audio_tokenizer_path)
        phonemes = self.audio_tokenizer.code_phoneme_log_probs if self.config.transcript_pointer else None
        self.phoneme_guide = PhonemeGuide(phonemes, self.tokenizer) if phonemes is not None else None
        self.take_scorer = TakeScorer(self.audio_tokenizer.model, self.tokenizer) if phonemes is not None else None
        self.sampling_rate = self.audio_tokenizer.sampling_rate
        self.decode_codebooks = decode_codebooks or self.config.decode_codebooks or self.config.audio_num_codebooks
        if not 1 <= self.decode_codebooks <= self.config.audio_num_codebooks:
            raise ValueError(f"decode_codebooks {self.decode_codebooks}: "
                             f"the model generates 1..{self.config.audio_num_codebooks}")
        self._codes_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()  # reference clips, newest last
        stops = ("<|eot_id|>", "<|end_of_text|>")
        self._stop_ids = {self.tokenizer.token_id(t) for t in stops}

    # ------------------------------------------------------------------------- public API

    def generate(self, chat_ml_sample: ChatMLSample, max_new_tokens: int = 1024, temperature: float = 0.7,
                 top_k: int | None = None, top_p: float | None = 0.95, stop_strings: list[str] | None = None,
                 force_audio_gen: bool = True, ras_win_len: int = 7, ras_win_max_num_repeat: int = 2,
                 seed: int | None = None) -> HiggsAudioResponse:
        """Generate the assistant's reply to a conversation: speech (and any text before it)."""
        settings = GenerationSettings(max_new_tokens, temperature, top_k, top_p, stop_strings, force_audio_gen,
                                      ras_win_len, ras_win_max_num_repeat, seed)
        return self.generate_batch([chat_ml_sample], [settings])[0]

    def generate_batch(self, samples: list[ChatMLSample],
                       settings: list[GenerationSettings] | GenerationSettings | None = None) -> list[HiggsAudioResponse]:
        """Generate replies to many conversations in one batched decode (settings per request or shared)."""
        prompts = [self.prompt(s) for s in samples]
        return self.generate_prompts(prompts, settings)

    def generate_prompts(self, prompts: list[ChatMLDatasetSample],
                         settings: list[GenerationSettings] | GenerationSettings | None = None,
                         decode_audio: bool = True) -> list[HiggsAudioResponse]:
        """`generate_batch` for conversations whose audio is already codes (see `prompt`). decode_audio=False:
        codes only (`audio` None), for a caller that joins them first (long form) and then `decode_audio`s.
        A request with `best_of` k decodes k takes in the same batch and keeps the best (takes.py)."""
        settings = _per_request(settings, len(prompts))
        takes = [(i, take) for i, s in enumerate(settings) for take in self._takes(prompts[i], s)]
        rows = None
        for rows, _ in self._decode([prompts[i] for i, _ in takes], [take for _, take in takes]):
            pass
        best: dict[int, tuple[float, _Row, np.ndarray]] = {}
        for (i, _), row in zip(takes, rows):
            codes = self.reverted_codes(row)
            score = self.take_scorer(codes, row.reading) if settings[i].best_of > 1 else 0.0
            if i not in best or score < best[i][0]:
                best[i] = (score, row, codes)
        responses = [self._response(row, codes) for _, row, codes in (best[i] for i in range(len(prompts)))]
        return self.decode_audio(responses) if decode_audio else responses

    def _takes(self, prompt: ChatMLDatasetSample, settings: GenerationSettings) -> list[GenerationSettings]:
        """The settings of each take of a request (take 0: the request's own); ValueError for a `best_of` this
        engine cannot choose among."""
        if settings.best_of < 1:
            raise ValueError(f"best_of must be at least 1, not {settings.best_of}")
        if settings.best_of == 1:
            return [settings]
        if self.take_scorer is None:
            raise ValueError("best_of > 1 needs a model with a transcript pointer and an audio tokenizer with a "
                             "codebook-0 phoneme head (v3), to tell the takes apart")
        if not self._reading(prompt.input_ids):
            raise ValueError("best_of > 1 needs a transcript to say in the last user message")
        seeds = [None if settings.seed is None else settings.seed + k * TAKE_SEED_STRIDE for k in range(settings.best_of)]
        return [replace(settings, seed=seed, best_of=1) for seed in seeds]

    def decode_audio(self, responses: list[HiggsAudioResponse]) -> list[HiggsAudioResponse]:
        """Fill in the audio of responses that have codes, decoded together (one codec call per length)."""
        said = [r for r in responses if r.generated_audio_tokens.shape[1]]
        clips = [r.generated_audio_tokens[:self.decode_codebooks] for r in said]
        for response, audio in zip(said, self.audio_tokenizer.decode_batch(clips)):
            response.audio = audio
        return responses

    async def generate_delta_stream(self, chat_ml_sample: ChatMLSample, max_new_tokens: int = 1024,
                                    temperature: float = 0.7, top_k: int | None = None, top_p: float | None = 0.95,
                                    stop_strings: list[str] | None = None, force_audio_gen: bool = True,
                                    ras_win_len: int = 7, ras_win_max_num_repeat: int = 2,
                                    seed: int | None = None) -> AsyncIterator[HiggsAudioStreamerDelta]:
        """Yield a delta per decode step; `delta.audio` is playable audio as soon as it is final.

        Steps run in a worker thread, so a server's event loop stays responsive while it streams.
        """
        settings = GenerationSettings(max_new_tokens, temperature, top_k, top_p, stop_strings, force_audio_gen,
                                      ras_win_len, ras_win_max_num_repeat, seed)
        prompt = await asyncio.to_thread(self.prompt, chat_ml_sample)
        deltas = self.stream_prompt(prompt, settings)
        while (delta := await asyncio.to_thread(next, deltas, None)) is not None:
            yield delta

    def stream_prompt(self, prompt: ChatMLDatasetSample, settings: GenerationSettings) -> Iterator[HiggsAudioStreamerDelta]:
        """The synchronous stream behind `generate_delta_stream`."""
        for deltas in self.stream_prompts([prompt], settings):
            yield deltas[0]

    def stream_prompts(self, prompts: list[ChatMLDatasetSample],
                       settings: list[GenerationSettings] | GenerationSettings | None = None,
                       cancelled: Callable[[int], bool] | None = None) -> Iterator[list[HiggsAudioStreamerDelta]]:
        """A batched stream: after every decode step, a delta per prompt (an empty one once its row is done); a
        row's last delta has its finish reason and, in `response`, its codes, text and usage (not its audio: that
        was streamed). A row for which `cancelled(i)` turns true stops at the next step ("cancelled").
        A row's audio comes every `stream_chunk_frames` frames of its settings; the chunks due at one step are
        decoded together."""
        settings = _per_request(settings, len(prompts))
        if any(s.best_of != 1 for s in settings):
            raise ValueError("a stream says one take: best_of must be 1")
        # Eager: a frame is released by the column that completes it. The engine knows a stream's last
        # column (it carries the finish reason) and does not push it, so the frames are those of `generate`.
        reverters = [DelayReverter(self.config.audio_num_codebooks, eager=True) for _ in prompts]
        audio = self.audio_tokenizer.batch_streaming_decoder([s.stream_chunk_frames for s in settings],
                                                            [s.stream_first_chunk_frames for s in settings])
        done = [False] * len(prompts)
        for rows, fed in self._decode(prompts, settings):
            deltas = [HiggsAudioStreamerDelta() for _ in rows]
            frames: list[torch.Tensor | None] = [None] * len(rows)
            for i, (row, (kind, value), delta) in enumerate(zip(rows, fed, deltas)):
                if done[i]:
                    continue
                delta.finish_reason = row.finish_reason
                if kind == "text":
                    delta.text_tokens = [value]
                    delta.text = self.tokenizer.decode([value])
                elif kind == "audio":
                    delta.audio_tokens = value.numpy()
                    if row.finish_reason is None:
                        frames[i] = self._clip(reverters[i].push(value)[:self.decode_codebooks])
                if row.finish_reason is not None:
                    done[i] = True
                    delta.response = self._response(row, self.reverted_codes(row))
            for delta, samples in zip(deltas, audio.push(frames, [d.finish_reason is not None for d in deltas])):
                delta.audio = samples
            yield deltas
            for i, row in enumerate(rows):
                if row.finish_reason is None and cancelled is not None and cancelled(i):
                    row.finish_reason = "cancelled"
        if not all(done):  # rows cancelled after the batch's last step still get their closing delta
            deltas = [HiggsAudioStreamerDelta() for _ in rows]
            for i, row in enumerate(rows):
                if not done[i]:
                    deltas[i].finish_reason = row.finish_reason
                    deltas[i].response = self._response(row, self.reverted_codes(row))
            yield deltas

    # ------------------------------------------------------------------------- prompts

    def prompt(self, sample: ChatMLSample) -> ChatMLDatasetSample:
        """Tokens of a conversation ending in the assistant header, with its audio encoded to codes."""
        input_ids, label_ids, contents, _ = prepare_chatml_sample(sample, self.tokenizer, add_generation_prompt=True)
        return ChatMLDatasetSample(input_ids, label_ids, [self.audio_codes(c) for c in contents])

    def check_fits(self, prompt: ChatMLDatasetSample, settings: GenerationSettings) -> None:
        """ValueError when a prompt and its `max_new_tokens` steps do not fit in the model's context."""
        length = expanded_length(prompt) + int(settings.force_audio_gen)
        context = self.config.max_position_embeddings
        if length + settings.max_new_tokens > context:
            raise ValueError(f"the prompt ({length} positions) and max_new_tokens {settings.max_new_tokens} need "
                             f"{length + settings.max_new_tokens} positions, more than the model's context of {context}")

    def clear_prefix_cache(self) -> None:
        """Forget the prompt prefixes kept across requests (the next request of every voice reads it anew)."""
        self.prefill.cache.clear()

    def audio_codes(self, content: AudioContent) -> np.ndarray:
        """Codes (n_q, T) of an audio content: a file path or base64 wav, cut to offset/duration if set."""
        key = content.cache_key()
        if key in self._codes_cache:
            self._codes_cache.move_to_end(key)
        else:
            wav, sr = content.waveform()
            self._codes_cache[key] = self.audio_tokenizer.encode(wav, sr=sr).numpy()
            while len(self._codes_cache) > CODES_CACHE_SIZE:
                self._codes_cache.popitem(last=False)
        return self._codes_cache[key]

    # ------------------------------------------------------------------------- decoding

    def _decode(self, prompts: list[ChatMLDatasetSample], settings: list[GenerationSettings]):
        """Run the batched decode; after every step yield (rows, what each row fed: (kind, value)).

        The prompt's prefill is one `HiggsAudioModel.forward`; every step after it is one
        `HiggsAudioDecoder.step` into the same KV cache, with the batch's rows sampled together.
        """
        cfg = self.config
        expanded = []
        for prompt, s in zip(prompts, settings):
            self.check_fits(prompt, s)
            if s.force_audio_gen:
                prompt = ChatMLDatasetSample(prompt.input_ids + [cfg.audio_out_bos_token_id],
                                             prompt.label_ids + [-100], prompt.audio_codes)
            expanded.append(expand_sample(prompt, cfg))
        rows = [_Row(s, len(e), make_generator(s.seed)) for e, s in zip(expanded, settings)]
        for row, e, prompt in zip(rows, expanded, prompts):
            row.audio = int(e.input_ids[-1]) == cfg.audio_out_bos_token_id
            row.reading = self._reading(prompt.input_ids)
        sampler = BatchSampler(settings, [row.generator for row in rows], cfg.audio_num_codebooks,
                               cfg.audio_stream_bos_id, cfg.audio_stream_eos_id)
        longest = max(s.max_new_tokens for s in settings)
        feed_codes = torch.full((len(rows), cfg.audio_num_codebooks), cfg.audio_stream_bos_id, device=self.device)
        feed_ids = torch.full((len(rows),), cfg.pad_token_id, device=self.device)
        feed_spoken = torch.full((len(rows),), -1, device=self.device)
        # inference_mode per step, not around the loop: a stream resumes this generator in worker threads,
        # and the mode is thread-local.
        with torch.inference_mode():
            cache, attention, hidden, shared = self.prefill(expanded, longest)
            state = self.decoder.start(cache, attention, shared)
        for step in range(longest):
            with torch.inference_mode():
                fed = self._next(rows, hidden, step, sampler, feed_codes, feed_ids, feed_spoken)
            for row in rows:  # a row's last step carries its finish reason, so a stream can flush on it
                if row.finish_reason is None and step + 1 >= row.settings.max_new_tokens:
                    row.finish_reason = "length"
            yield rows, fed
            if all(row.finish_reason is not None for row in rows):
                return
            with torch.inference_mode():
                hidden = self._feed(state, rows, fed, feed_codes, feed_ids, feed_spoken)

    def _reading(self, input_ids: list[int]) -> list[int]:
        """The sounding tokens of the transcript a prompt asks to speak, for a model with a transcript pointer."""
        span = last_user_text(input_ids, len(input_ids), self.tokenizer) if self.config.transcript_pointer else None
        if span is None:
            return []
        ids = input_ids[span[0]:span[1]]
        return [ids[i] for i in sounding(self.tokenizer, ids)]

    def _next(self, rows: list[_Row], hidden: torch.Tensor, step: int, sampler: BatchSampler,
              feed_codes: torch.Tensor, feed_ids: torch.Tensor, feed_spoken: torch.Tensor) -> list[tuple[str, object]]:
        """What every row feeds next, sampled from its logits: ('text', id), ('audio', column (n_q,)) or
        ('none', None) once it is done. Updates the rows, and feed_codes/feed_ids/feed_spoken at the rows
        that feed."""
        fed: list[tuple[str, object]] = [("none", None)] * len(rows)
        audio, text = [], []
        for i, row in enumerate(rows):
            if row.finish_reason is None and step >= row.settings.max_new_tokens:
                row.finish_reason = "length"
            if row.finish_reason is None:
                (audio if row.audio else text).append(i)
        if audio:
            every_row = len(audio) == len(rows)
            # The pointer first: the frame about to be sampled speaks the token it moves to (both come from
            # the same hidden state, so the order does not change plain sampling; guidance needs the token).
            self._move_pointers([rows[i] for i in audio], hidden if every_row else hidden[audio])
            logits = self.decoder.audio_logits(hidden if every_row else hidden[audio])
            self._guide([rows[i] for i in audio], logits[:, 0])
            columns, flags = sampler.audio_columns(audio, logits, every_row)
            if every_row:
                feed_codes.copy_(columns)
            else:
                feed_codes[audio] = columns
            for j, i in enumerate(audio):
                row, column, (ended, stopped) = rows[i], columns[j], flags[j]
                if row.columns:
                    row.column += 1
                if ended:
                    row.eos_column = row.column
                if stopped:
                    row.finish_reason = "stop"
                row.columns.append(column)
                fed[i] = ("audio", column)
            for i in audio:
                if rows[i].reading:
                    feed_spoken[i] = rows[i].reading[rows[i].pointer]
        if text:
            tokens = sampler.text_tokens(text, self.decoder.text_logits(hidden[text])).tolist()
            for i, token in zip(text, tokens):
                row = rows[i]
                row.text_tokens.append(token)
                if token == self.config.audio_out_bos_token_id:
                    row.audio = True
                elif token in self._stop_ids or self._hit_stop_string(row):
                    row.finish_reason = "stop"
                feed_ids[i] = token
                fed[i] = ("text", token)
        return fed

    def _guide(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Codebook-0 logits (n, V) of rows with a transcript, in place: guided toward the phoneme each row's
        pointer is on (`phoneme_guidance`), and no EOS before the pointer reaches the transcript's last token
        (or the row has spoken MAX_FRAMES_PER_TOKEN frames per token)."""
        if not any(row.reading for row in rows):
            return
        early = [j for j, row in enumerate(rows) if row.reading and row.pointer < len(row.reading) - 1
                 and len(row.columns) < MAX_FRAMES_PER_TOKEN * len(row.reading)]
        logits[early, self.config.audio_stream_eos_id] = float("-inf")
        if self.phoneme_guide is not None:
            self.phoneme_guide.apply(logits, [row.reading[row.pointer] if row.reading else -1 for row in rows],
                                     [row.settings.phoneme_guidance for row in rows])

    def _move_pointers(self, rows: list[_Row], hidden: torch.Tensor) -> None:
        """Move each row's transcript pointer by a step sampled from the pointer head, before the row's next frame
        is sampled (its first frame starts at the first token); the row's generator keeps a seeded request
        reproducible.

        The step is argmax(p / noise) with noise ~ Exp(1) drawn from the row's generator: a draw from p (the
        exponential race `torch.multinomial(p, 1)` runs on a CPU too), in one batched division instead of a call
        per row.
        """
        if self.decoder.pointer_head is None:
            return
        moving = [j for j, row in enumerate(rows) if row.reading and row.columns]
        if not moving:
            return
        probs = self.decoder.pointer_logits(hidden[moving]).softmax(-1)
        noise = torch.empty_like(probs)
        for j, p in zip(moving, noise):
            p.exponential_(generator=rows[j].generator)
        for j, step in zip(moving, (probs / noise).argmax(-1).tolist()):
            rows[j].pointer = min(rows[j].pointer + step, len(rows[j].reading) - 1)

    def _feed(self, state, rows: list[_Row], fed: list[tuple[str, object]], feed_codes: torch.Tensor,
              feed_ids: torch.Tensor, feed_spoken: torch.Tensor) -> torch.Tensor:
        """One decoder step feeding what the rows just sampled; a row that fed nothing (it is done) is fed
        a dummy of the other rows' kind, so that the common all-audio step needs no routing."""
        kinds = {kind for kind, _ in fed if kind != "none"}
        if kinds == {"audio"}:
            return self.decoder.step(state, audio_codes=feed_codes, spoken_ids=feed_spoken)
        if kinds == {"text"}:
            return self.decoder.step(state, input_ids=feed_ids)
        audio_rows = torch.tensor([kind == "audio" for kind, _ in fed], device=self.device)
        return self.decoder.step(state, feed_ids, feed_codes, audio_rows, spoken_ids=feed_spoken)

    def _hit_stop_string(self, row: _Row) -> bool:
        if not row.settings.stop_strings:
            return False
        text = self.tokenizer.decode(row.text_tokens[-32:])
        return any(text.endswith(stop) for stop in row.settings.stop_strings)

    # ------------------------------------------------------------------------- results

    def reverted_codes(self, row: _Row) -> np.ndarray:
        """The audio codes (n_q, T) of a row's delayed columns (an unfinished staircase is cut off)."""
        n_q = self.config.audio_num_codebooks
        if len(row.columns) <= n_q:
            return np.zeros((n_q, 0), np.int64)
        codes = revert_delay_pattern(torch.stack(row.columns, dim=1))
        valid = (codes < self.config.audio_codebook_size).all(dim=0)  # drop BOS/EOS fill of a cut-off stream
        return self._clip(codes[:, valid]).numpy()

    def _clip(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.clamp(0, self.config.audio_codebook_size - 1)

    def _response(self, row: _Row, codes: np.ndarray) -> HiggsAudioResponse:
        """A row's response, its audio not yet decoded (`decode_audio`)."""
        text = self.tokenizer.decode(row.text_tokens)
        completion = len(row.text_tokens) + len(row.columns)
        usage = {"prompt_tokens": row.prompt_len, "completion_tokens": completion,
                 "total_tokens": row.prompt_len + completion, "cached_tokens": 0, "finish_reason": row.finish_reason}
        return HiggsAudioResponse(None, self.sampling_rate, text, codes, list(row.text_tokens), usage)


def _check_codec(config, audio_tokenizer_path: str | Path | None) -> None:
    """A model only speaks through the audio tokenizer whose codes it learned."""
    expected = getattr(config, "audio_tokenizer_fingerprint", None)
    found = codec_fingerprint(audio_tokenizer_path)
    if expected is not None and expected != found:
        where = audio_tokenizer_path or "the shipped audio tokenizer"
        raise ValueError(f"this model learned the codes of audio tokenizer {expected}, but {where} is {found}; "
                         "pass the matching --codec")


def _per_request(settings, n: int) -> list[GenerationSettings]:
    if settings is None or isinstance(settings, GenerationSettings):
        return [settings or GenerationSettings()] * n
    if len(settings) != n:
        raise ValueError(f"{len(settings)} settings for {n} requests")
    return list(settings)


__all__ = ["HiggsAudioServeEngine", "HiggsAudioResponse", "HiggsAudioStreamerDelta", "GenerationSettings", "SHIPPED_MODEL"]
