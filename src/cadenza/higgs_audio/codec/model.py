"""The audio tokenizer model: log-mel encoder -> residual VQ (8 x 1024) -> ConvNeXt decoder + iSTFT.

    wav (B, N) 24 kHz
      -> LogMel (100 fine frames/s) -> ConvNeXt @100 Hz -> strided conv x4 down -> ConvNeXt @25 Hz
      -> latent (B, T, latent_dim) -> ResidualVQ (codes (B, n_q, T))
      -> ConvNeXt @25 Hz -> transposed conv x4 up -> ConvNeXt @100 Hz -> iSTFT head -> wav (B, T * 960)

Why this shape: on two CPU cores the costly part of a codec is the decoder's upsampling to the
sample rate. Predicting STFT frames at 100 Hz and inverting them with one iSTFT (as Vocos and
WavTokenizer do) skips every transposed-conv stage above 100 Hz, so most compute runs at 25 Hz.
All convolutions are non-causal with a short, finite reach, so long inputs are encoded and
decoded in overlapping chunks whose trimmed outputs equal one whole pass.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import ResidualVQ

from cadenza.higgs_audio.codec.config import CodecConfig
from cadenza.higgs_audio.codec.modules import ConvNeXtBlock, ISTFTHead, LogMel, ceil_div, receptive_field_frames

MEL_OFFSET, MEL_SCALE = 4.0, 4.0  # brings log-mel values (about -11.5 .. +4) near zero


class Encoder(nn.Module):
    """Audio (B, N) with N a multiple of hop_length -> latent (B, N / hop_length, latent_dim)."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        up = cfg.upsample
        self.mel = LogMel(cfg.sample_rate, cfg.mel_n_fft, cfg.fine_hop, cfg.n_mels)
        self.fine_in = nn.Conv1d(cfg.n_mels, cfg.enc_fine_dim, 7, padding=3)
        self.fine_blocks = nn.Sequential(*[ConvNeXtBlock(cfg.enc_fine_dim, 7, cfg.mlp_ratio) for _ in range(cfg.enc_fine_blocks)])
        self.down = nn.Conv1d(cfg.enc_fine_dim, cfg.enc_dim, 2 * up, stride=up, padding=up // 2)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(cfg.enc_dim, 7, cfg.mlp_ratio) for _ in range(cfg.enc_blocks)])
        self.norm = nn.LayerNorm(cfg.enc_dim, eps=1e-6)
        self.out = nn.Linear(cfg.enc_dim, cfg.latent_dim)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = (self.mel(wav) + MEL_OFFSET) / MEL_SCALE
        x = self.fine_blocks(self.fine_in(x))
        x = self.blocks(self.down(x))
        return self.out(self.norm(x.transpose(1, 2)))

    @staticmethod
    def reach_frames(cfg: CodecConfig) -> int:
        """Code frames of context on each side that make chunked encoding match a whole pass."""
        fine = ceil_div(cfg.mel_n_fft, 2 * cfg.fine_hop) + 3 + receptive_field_frames(7, cfg.enc_fine_blocks) + cfg.upsample
        return ceil_div(fine, cfg.upsample) + receptive_field_frames(7, cfg.enc_blocks) + 1


class Decoder(nn.Module):
    """Quantized latent (B, T, latent_dim) -> audio (B, T * hop_length)."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.inp = nn.Conv1d(cfg.latent_dim, cfg.dec_dim, 3, padding=1)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(cfg.dec_dim, cfg.dec_kernel, cfg.mlp_ratio) for _ in range(cfg.dec_blocks)])
        self.norm = nn.LayerNorm(cfg.dec_dim, eps=1e-6)
        # kernel == stride: each fine frame comes from its own code frame only; the fine blocks smooth.
        self.up = nn.ConvTranspose1d(cfg.dec_dim, cfg.dec_fine_dim, cfg.upsample, stride=cfg.upsample)
        self.fine_blocks = nn.Sequential(*[ConvNeXtBlock(cfg.dec_fine_dim, cfg.fine_kernel, cfg.mlp_ratio) for _ in range(cfg.dec_fine_blocks)])
        self.fine_norm = nn.LayerNorm(cfg.dec_fine_dim, eps=1e-6)
        self.head = ISTFTHead(cfg.dec_fine_dim, cfg.head_n_fft, cfg.fine_hop)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.inp(latent.transpose(1, 2)))
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        x = self.fine_blocks(self.up(x))
        x = self.fine_norm(x.transpose(1, 2)).transpose(1, 2)
        return self.head(x)

    @staticmethod
    def reach_frames(cfg: CodecConfig) -> int:
        """Code frames of context on each side that make chunked decoding match a whole pass."""
        fine = receptive_field_frames(cfg.fine_kernel, cfg.dec_fine_blocks) + ceil_div(cfg.head_n_fft, 2 * cfg.fine_hop)
        return 1 + receptive_field_frames(cfg.dec_kernel, cfg.dec_blocks) + ceil_div(fine, cfg.upsample) + 1


class Codec(nn.Module):
    """Encoder + residual VQ + decoder; `forward` is the training pass, the rest is inference."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = ResidualVQ(
            dim=cfg.latent_dim,
            codebook_dim=cfg.codebook_dim,
            num_quantizers=cfg.num_quantizers,
            codebook_size=cfg.codebook_size,
            decay=cfg.ema_decay,
            kmeans_init=cfg.kmeans_init,
            kmeans_iters=cfg.kmeans_iters,
            threshold_ema_dead_code=cfg.threshold_ema_dead_code,
            commitment_weight=cfg.commitment_weight,
            quantize_dropout=cfg.quantizer_dropout > 0,
            quantize_dropout_cutoff_index=0,
        )
        self.decoder = Decoder(cfg)

    # --- training -------------------------------------------------------------------------------
    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """wav (B, N), N a multiple of hop_length -> (reconstruction (B, N), commitment loss, codes (B, n_q, T))."""
        latent = self.encoder(wav)
        if self.training and self.cfg.quantizer_dropout > 0:
            # The library drops codebooks on every step; doing it on a share of steps keeps the
            # full-bitrate reconstruction strong while fewer codebooks still decode.
            self.quantizer.quantize_dropout = random.random() < self.cfg.quantizer_dropout
        quantized, codes, commit = self.quantizer(latent)
        recon = self.decoder(quantized)
        return recon, commit.sum(), codes.transpose(1, 2)

    # --- inference ------------------------------------------------------------------------------
    def pad_to_frames(self, wav: torch.Tensor) -> torch.Tensor:
        """Zero-pad (B, N) audio on the right to a whole number of code frames (at least one)."""
        hop = self.cfg.hop_length
        frames = max(1, ceil_div(wav.shape[-1], hop))
        return F.pad(wav, (0, frames * hop - wav.shape[-1]))

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """(B, N) audio at 24 kHz -> codes (B, n_q, ceil(N / hop_length)) in one pass."""
        latent = self.encoder(self.pad_to_frames(wav))
        _, codes, _ = self.quantizer(latent)
        codes = codes.transpose(1, 2)
        return codes if n_q is None else codes[:, :n_q]

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, k, T) with k <= num_quantizers (the first k codebooks) -> audio (B, T * hop_length)."""
        if codes.shape[1] < self.cfg.num_quantizers:
            codes = F.pad(codes, (0, 0, 0, self.cfg.num_quantizers - codes.shape[1]), value=-1)
        latent = self.quantizer.get_output_from_indices(codes.transpose(1, 2))
        return self.decoder(latent)

    @torch.inference_mode()
    def encode_chunked(self, wav: torch.Tensor, chunk_frames: int = 750, context: int | None = None) -> torch.Tensor:
        """Encode (B, N) audio in chunks of `chunk_frames` code frames with `context` frames either side.

        Memory stays bounded by the chunk size; with the default context (the encoder's reach)
        the codes equal those of `encode` on the whole input.
        """
        hop = self.cfg.hop_length
        wav = self.pad_to_frames(wav)
        total = wav.shape[-1] // hop
        context = Encoder.reach_frames(self.cfg) if context is None else context
        if total <= chunk_frames:
            return self.encode(wav)
        out = []
        for start in range(0, total, chunk_frames):
            end = min(total, start + chunk_frames)
            lo, hi = max(0, start - context), min(total, end + context)
            codes = self.encode(wav[:, lo * hop : hi * hop])
            out.append(codes[:, :, start - lo : end - lo])
        return torch.cat(out, dim=-1)

    @torch.inference_mode()
    def decode_chunks(self, codes: torch.Tensor, chunk_frames: int = 25, context: int | None = None):
        """Yield audio (B, samples) for consecutive chunks of `chunk_frames` code frames.

        Each chunk is decoded with `context` frames of codes on both sides and trimmed, so the
        concatenated chunks equal `decode` of the whole; the lookahead needed is `context` frames.
        """
        hop = self.cfg.hop_length
        total = codes.shape[-1]
        context = Decoder.reach_frames(self.cfg) if context is None else context
        for start in range(0, total, chunk_frames):
            end = min(total, start + chunk_frames)
            lo, hi = max(0, start - context), min(total, end + context)
            audio = self.decode(codes[..., lo:hi])
            yield audio[:, (start - lo) * hop : (end - lo) * hop]
