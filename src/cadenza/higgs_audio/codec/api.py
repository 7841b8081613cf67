"""The fixed public API of the audio tokenizer.

    tok = load_audio_tokenizer()            # the shipped model in cadenza/pretrained/codec
    codes = tok.encode("speech.wav")        # LongTensor (8, T), T = ceil(seconds * 25)
    wav = tok.decode(codes)                 # float32 numpy at 24 kHz, T * 960 samples

Any sample rate and mono or stereo go in (paths in any format soundfile reads, or arrays with `sr`);
long inputs are encoded and decoded in overlapping chunks, so memory stays bounded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from cadenza.core.audio import AudioError, PathLike, load_mono, normalize_loudness
from cadenza.higgs_audio.codec.config import CodecConfig
from cadenza.higgs_audio.codec.model import Codec
from cadenza.higgs_audio.codec.phonemes import BLANK

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "pretrained" / "codec"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_codec(model: Codec, out_dir: str | Path, extra: dict | None = None, half: bool = False) -> Path:
    """Write `model.safetensors` + `config.json` (core.checkpoint format, class CodecConfig) atomically.

    `extra` (e.g. the training step) is stored beside the config. `half` stores float weights as
    float16 (half the size, for shipping); loading casts them back to float32.
    """
    from cadenza.core.checkpoint import half_state_dict, save_pretrained

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if half:
        state = half_state_dict(state)
    return save_pretrained(state, model.cfg, out_dir, extra={**(extra or {}), "weights_dtype": "float16" if half else "float32"})


def load_codec(path: str | Path) -> Codec:
    """A `Codec` in eval mode from a directory written by `save_codec` (no pickle involved)."""
    from cadenza.core.checkpoint import load_pretrained, load_state_dict

    path = Path(path)
    if not (path / WEIGHTS).exists() or not (path / CONFIG).exists():
        raise FileNotFoundError(f"{path}: not a codec directory (needs {WEIGHTS} and {CONFIG})")
    document = json.loads((path / CONFIG).read_text())
    if "class" in document:
        state, document = load_pretrained(path, kind=CodecConfig.__name__)
        config = dict(document["config"])
    else:  # the flat layout of the first training runs: config keys at the top level
        state = load_state_dict(path / WEIGHTS)
        config = {k: v for k, v in document.items() if k not in ("model_type", "meta")}
    model = Codec(CodecConfig.from_dict(config))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


class AudioTokenizer:
    """24 kHz speech <-> residual VQ codes (num_codebooks x T at `tps` frames per second)."""

    def __init__(self, model: Codec, device: str | torch.device = "cpu", chunk_seconds: float = 30.0):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.cfg = model.cfg
        self.chunk_frames = max(1, int(chunk_seconds * self.cfg.frame_rate))

    @property
    def sampling_rate(self) -> int:
        """Sample rate of decoded audio (24000)."""
        return self.cfg.sample_rate

    @property
    def tps(self) -> int:
        """Code frames (tokens per codebook) per second (25)."""
        return int(round(self.cfg.frame_rate))

    @property
    def num_codebooks(self) -> int:
        """Residual codebooks per frame (8)."""
        return self.cfg.num_quantizers

    @property
    def codebook_size(self) -> int:
        """Entries per codebook (1024)."""
        return self.cfg.codebook_size

    @property
    def hop_length(self) -> int:
        """Samples per code frame (960)."""
        return self.cfg.hop_length

    @functools.cached_property
    def code_phoneme_log_probs(self) -> torch.Tensor | None:
        """log P(phoneme | codebook-0 code), (codebook_size, len(PHONEME_SYMBOLS)): the codec's CTC phoneme head
        read at a frame whose code and neighbours are all that code, over the phonemes (the blank left out);
        None for a codec without a phoneme head (before v3)."""
        semantic = self.model.semantic
        if semantic is None or semantic.phoneme_head is None:
            return None
        with torch.inference_mode():
            vectors = semantic.vq.get_output_from_indices(torch.arange(self.codebook_size, device=self.device))
            steady = vectors[:, None, :].expand(-1, 3, -1)  # (codes, 3 frames, dim): the head's kernel is 3
            log_probs = semantic.phoneme_log_probs(steady)[:, 1]
        return log_probs[:, BLANK + 1:].log_softmax(-1).float()

    def encode(self, wav_or_path: PathLike | np.ndarray | torch.Tensor, sr: int | None = None,
               loudness_normalize: bool = False, loudness_threshold: float = -23.0) -> torch.Tensor:
        """Audio (path, or array at `sr`, mono or stereo) -> LongTensor (num_codebooks, T).

        T = ceil(seconds * tps); audio shorter than one frame gives T = 1. Raises `AudioError`
        naming the input if it is missing, not audio, empty, or has NaN/inf samples.
        """
        if not isinstance(wav_or_path, (str, os.PathLike)) and sr is None:
            sr = self.sampling_rate  # arrays without a rate are taken to be 24 kHz
        wav = load_mono(wav_or_path, sr, self.sampling_rate)
        if loudness_normalize:
            wav = normalize_loudness(wav, loudness_threshold)
        x = torch.from_numpy(np.ascontiguousarray(wav))[None].to(self.device)
        codes = self.model.encode_chunked(x, chunk_frames=self.chunk_frames)
        return codes[0].long().cpu()

    def _check_codes(self, codes) -> torch.Tensor:
        codes = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
        if codes.ndim == 3 and codes.shape[0] == 1:
            codes = codes[0]
        if codes.ndim != 2:
            raise ValueError(f"codes must have shape (num_codebooks, T), got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point:
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        if not 1 <= codes.shape[0] <= self.num_codebooks:
            raise ValueError(f"codes have {codes.shape[0]} codebooks; this tokenizer has 1..{self.num_codebooks}")
        if codes.shape[1] == 0:
            raise ValueError("codes are empty (T = 0)")
        if int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.codebook_size - 1}], got [{int(codes.min())}, {int(codes.max())}]")
        return codes.long().to(self.device)

    def decode(self, codes: torch.Tensor | np.ndarray) -> np.ndarray:
        """Codes (k, T) or (1, k, T), k <= num_codebooks (the first k) -> float32 audio at 24 kHz, T * 960 samples."""
        return self.decode_batch([codes])[0]

    def decode_batch(self, clips: list[torch.Tensor | np.ndarray]) -> list[np.ndarray]:
        """`decode` of many clips: clips of one shape (a batch's requests said at one length) go through the codec
        together, a codec call per chunk for all of them instead of one each."""
        codes = [self._check_codes(c) for c in clips]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, c in enumerate(codes):
            groups.setdefault(tuple(c.shape), []).append(i)
        audio: dict[int, np.ndarray] = {}
        for members in groups.values():
            chunks = self.model.decode_chunks(torch.stack([codes[i] for i in members]), chunk_frames=self.chunk_frames)
            audio.update(zip(members, torch.cat(list(chunks), dim=1).float().cpu().numpy()))
        return [audio[i] for i in range(len(codes))]

    def decode_stream(self, codes: torch.Tensor | np.ndarray, chunk_frames: int = 25) -> Iterator[np.ndarray]:
        """Yield float32 audio chunk by chunk (`chunk_frames` code frames each); together equal to `decode`.

        Each chunk needs `lookahead_frames` frames of codes past its end (overlapped chunks, trimmed).
        """
        codes = self._check_codes(codes)
        for audio in self.model.decode_chunks(codes[None], chunk_frames=chunk_frames):
            yield audio[0].float().cpu().numpy()

    def streaming_decoder(self, chunk_frames: int = 1, first_chunk_frames: int | None = None) -> "StreamingDecoder":
        """An incremental decoder: push code frames as they are generated, get audio once `chunk_frames` of them
        are final (the first `first_chunk_frames`, by default `chunk_frames`)."""
        return StreamingDecoder(self, chunk_frames, first_chunk_frames)

    def batch_streaming_decoder(self, chunk_frames: list[int], first_chunk_frames: list[int | None] | None = None
                                ) -> "BatchStreamingDecoder":
        """Streaming decoders of many streams (chunk sizes per stream) that decode in shared codec calls."""
        return BatchStreamingDecoder(self, chunk_frames, first_chunk_frames)

    @property
    def lookahead_frames(self) -> int:
        """Code frames past a chunk's end that streaming decode needs."""
        from cadenza.higgs_audio.codec.model import Decoder

        return Decoder.reach_frames(self.cfg)


class StreamingDecoder:
    """Decode codes that arrive a few frames at a time; the audio equals `decode` of all of them.

    `push(codes)` takes (k, n) new frames and returns the audio of the frames that now have
    `lookahead_frames` frames after them, once there are `chunk_frames` of them (`first_chunk_frames` for
    the stream's first audio), else an empty array; `flush()` returns the rest at the end of the stream.
    Every decode re-reads `lookahead_frames` frames on each side of its chunk, so a chunk of c frames
    costs a decode of c + 2 x lookahead frames: larger chunks waste less, smaller ones play sooner.
    Only the last 2 x lookahead + chunk frames of codes are kept.
    """

    def __init__(self, tokenizer: AudioTokenizer, chunk_frames: int = 1, first_chunk_frames: int | None = None):
        first_chunk_frames = chunk_frames if first_chunk_frames is None else first_chunk_frames
        if chunk_frames < 1 or first_chunk_frames < 1:
            raise ValueError(f"chunks must hold at least one frame, got {chunk_frames} (first {first_chunk_frames})")
        self.tok = tokenizer
        self.context = tokenizer.lookahead_frames
        self.chunk_frames, self.first_chunk_frames = chunk_frames, first_chunk_frames
        self.buffer: torch.Tensor | None = None  # codes of frames [offset, offset + buffer length)
        self.offset = 0  # absolute index of buffer[:, 0]
        self.emitted = 0  # absolute index of the first frame not yet returned

    def push(self, codes: torch.Tensor | np.ndarray) -> np.ndarray:
        """Add (k, n) code frames; return float32 audio now due (possibly empty)."""
        self.add(codes)
        return self._decode(ended=False)

    def flush(self) -> np.ndarray:
        """Audio of the frames still held back (the stream has ended)."""
        return self._decode(ended=True)

    def add(self, codes: torch.Tensor | np.ndarray) -> None:
        """Add (k, n) code frames without decoding anything (see `due`)."""
        codes = self.tok._check_codes(codes)
        self.buffer = codes if self.buffer is None else torch.cat([self.buffer, codes], dim=1)

    def due(self, ended: bool = False) -> int | None:
        """The end (absolute frame) of the audio to return now: every final frame once a chunk of them is
        (all frames if the stream has `ended`); None while none is due."""
        if self.buffer is None:
            return None
        known = self.offset + self.buffer.shape[1]
        final = known if ended else known - self.context
        chunk = self.first_chunk_frames if self.emitted == 0 else self.chunk_frames
        if final <= self.emitted or (not ended and final - self.emitted < chunk):
            return None
        return final

    def window(self, until: int) -> tuple[int, torch.Tensor]:
        """(its first frame, the codes (k, n)) that decode frames [emitted, until) exactly."""
        lo = max(self.offset, self.emitted - self.context)
        hi = min(self.offset + self.buffer.shape[1], until + self.context)
        return lo, self.buffer[:, lo - self.offset : hi - self.offset]

    def take(self, audio: torch.Tensor, lo: int, until: int) -> np.ndarray:
        """Cut frames [emitted, until) from the decoded `window(until)` (samples from frame `lo` on); move on."""
        hop = self.tok.hop_length
        out = audio[(self.emitted - lo) * hop : (until - lo) * hop].float().cpu().numpy()
        self.emitted = until
        keep_from = max(self.offset, self.emitted - self.context)
        self.buffer = self.buffer[:, keep_from - self.offset :]
        self.offset = keep_from
        return out

    def _decode(self, ended: bool) -> np.ndarray:
        until = self.due(ended)
        if until is None:
            return np.zeros(0, np.float32)
        lo, codes = self.window(until)
        return self.take(self.tok.model.decode(codes[None])[0], lo, until)


class BatchStreamingDecoder:
    """Many streams (a batch's requests) decoded as they arrive, each exactly as its own `StreamingDecoder`.

    `push(codes, ended)` adds each stream's new frames and ends the streams flagged; the streams with audio
    due whose decode windows have the same length (the common case: a batch's streams advance in step) are
    decoded in one codec call, which costs far less than one call each.
    """

    def __init__(self, tokenizer: AudioTokenizer, chunk_frames: list[int],
                 first_chunk_frames: list[int | None] | None = None):
        firsts = first_chunk_frames or [None] * len(chunk_frames)
        if len(firsts) != len(chunk_frames):
            raise ValueError(f"{len(firsts)} first chunk sizes for {len(chunk_frames)} streams")
        self.tok = tokenizer
        self.streams = [StreamingDecoder(tokenizer, c, f) for c, f in zip(chunk_frames, firsts)]

    def push(self, codes: list[torch.Tensor | np.ndarray | None], ended: list[bool] | None = None
             ) -> list[np.ndarray | None]:
        """Add (k, n) frames to each stream (None or n = 0: none) and end the streams flagged in `ended`;
        return each stream's float32 audio now due, None where none is."""
        if len(codes) != len(self.streams) or (ended is not None and len(ended) != len(self.streams)):
            raise ValueError(f"{len(codes)} pushes for {len(self.streams)} streams")
        groups: dict[tuple[int, ...], list[tuple[int, int, int, torch.Tensor]]] = {}
        for i, (stream, new) in enumerate(zip(self.streams, codes)):
            if new is not None and new.shape[-1]:
                stream.add(new)
            until = stream.due(bool(ended and ended[i]))
            if until is not None:
                lo, window = stream.window(until)
                groups.setdefault(tuple(window.shape), []).append((i, lo, until, window))
        out: list[np.ndarray | None] = [None] * len(self.streams)
        for members in groups.values():
            audio = self.tok.model.decode(torch.stack([window for *_, window in members]))
            for (i, lo, until, _), samples in zip(members, audio):
                out[i] = self.streams[i].take(samples, lo, until)
        return out


def codec_fingerprint(path: str | Path | None = None) -> str:
    """A short hash of the codes a codec makes (the shipped one when None): models and code caches record it, so
    codes of different codecs never mix. It covers every weight but the decoder's, at float16 precision, so a
    decoder trained further on frozen codes (`task.freeze_codes`) or a float16 copy keeps the fingerprint."""
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(Path(path or SHIPPED_DIR) / WEIGHTS), framework="pt") as weights:
        for name in sorted(weights.keys()):
            if name.startswith("decoder."):
                continue
            tensor = weights.get_tensor(name)
            tensor = tensor.half() if tensor.is_floating_point() else tensor
            digest.update(name.encode() + tensor.numpy().tobytes())
    return digest.hexdigest()[:12]


def load_audio_tokenizer(path: str | Path | None = None, device: str = "cpu") -> AudioTokenizer:
    """The audio tokenizer at `path` (a `save_codec` directory), or the shipped one when None."""
    path = SHIPPED_DIR if path is None else Path(path)
    if path == SHIPPED_DIR and not (path / WEIGHTS).exists():
        raise FileNotFoundError(f"no shipped codec in {SHIPPED_DIR} (train one: `cadenza speech train-codec`)")
    return AudioTokenizer(load_codec(path), device=device)


__all__ = ["AudioTokenizer", "StreamingDecoder", "BatchStreamingDecoder", "AudioError", "load_audio_tokenizer", "codec_fingerprint", "save_codec", "load_codec", "SHIPPED_DIR"]
