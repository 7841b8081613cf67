"""CodecConfig: every size and setting of the audio tokenizer, saved beside its weights as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class CodecConfig:
    """Sizes of the mel encoder -> residual VQ -> ConvNeXt/iSTFT decoder audio tokenizer.

    Time runs at two rates: the fine rate (sample_rate / fine_hop = 100 frames/s) where the mel front
    end and the iSTFT head live, and the code rate (sample_rate / hop_length = 25 frames/s).
    """

    sample_rate: int = 24_000
    hop_length: int = 960  # samples per code frame: 24 kHz / 960 = 25 frames/s
    fine_hop: int = 240  # mel front end and iSTFT head hop (4 fine frames per code frame)
    mel_n_fft: int = 1024
    n_mels: int = 100
    # encoder
    enc_fine_dim: int = 128
    enc_fine_blocks: int = 2
    enc_dim: int = 256
    enc_blocks: int = 4
    # residual VQ
    latent_dim: int = 128
    codebook_dim: int = 64
    num_quantizers: int = 8
    codebook_size: int = 1024
    ema_decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    threshold_ema_dead_code: float = 0.02  # EMA uses per batch: size it to frames per batch / codebook size
    commitment_weight: float = 1.0
    quantizer_dropout: float = 0.5  # share of training steps that use a random number of codebooks
    # v3: codebook 0 is a separate "phonetic" VQ on a projection of the latent, trained with a CTC head over
    # the transcript's phonemes; the other num_quantizers - 1 codebooks are a residual VQ of what it misses.
    semantic_codebook: bool = False
    semantic_dim: int = 64
    # Codebook 0's own capacity to find phonemes whatever the voice: ConvNeXt blocks (width semantic_hidden)
    # reading the latent, added to the linear projection (0 = the projection alone, as v3's first run).
    semantic_blocks: int = 0
    semantic_hidden: int = 256
    # Share of training steps (with quantizer dropout) that decode from codebook 0 alone, so that it decodes to
    # intelligible speech by itself (0.0625 = as often as each other codebook count, 0.5 / 8).
    semantic_only_share: float = 0.0625
    n_phonemes: int = 0  # CTC head classes (phoneme symbols + blank); 0 = no head
    # decoder
    dec_dim: int = 384
    dec_blocks: int = 6
    dec_kernel: int = 3  # small kernels at the code rate keep the receptive field (and stream lookahead) short
    dec_fine_dim: int = 256
    dec_fine_blocks: int = 2
    fine_kernel: int = 7
    head_n_fft: int = 960  # iSTFT head: 4x overlap at fine_hop
    mlp_ratio: float = 3.0

    def __post_init__(self) -> None:
        if self.hop_length % self.fine_hop:
            raise ValueError(f"hop_length {self.hop_length} must be a multiple of fine_hop {self.fine_hop}")
        if (self.head_n_fft - self.fine_hop) % 2 or (self.mel_n_fft - self.fine_hop) % 2:
            raise ValueError("n_fft - fine_hop must be even for symmetric 'same' padding")

    @property
    def frame_rate(self) -> float:
        """Code frames per second (25 for 24 kHz / 960)."""
        return self.sample_rate / self.hop_length

    @property
    def upsample(self) -> int:
        """Fine frames per code frame."""
        return self.hop_length // self.fine_hop

    @property
    def bitrate(self) -> float:
        """Bits per second with all codebooks."""
        import math

        return self.frame_rate * self.num_quantizers * math.log2(self.codebook_size)

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CodecConfig":
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown codec config keys: {', '.join(unknown)}")
        return cls(**data)
