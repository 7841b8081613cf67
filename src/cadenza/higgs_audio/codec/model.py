"""The audio tokenizer model: log-mel encoder -> residual VQ (8 x 1024) -> ConvNeXt decoder + iSTFT.

    wav (B, N) 24 kHz
      -> LogMel (100 fine frames/s) -> ConvNeXt @100 Hz -> strided conv x4 down -> ConvNeXt @25 Hz
      -> latent (B, T, latent_dim) -> ResidualVQ (codes (B, n_q, T))
      -> ConvNeXt @25 Hz -> transposed conv x4 up -> ConvNeXt @100 Hz -> iSTFT head -> wav (B, T * 960)

v3 (`semantic_codebook`): codebook 0 comes from its own VQ on a projection of the latent, and a CTC head on
its output learns the transcript's phonemes from it (PAST, Interspeech 2025, with Mimi's split into a
semantic VQ beside an acoustic RVQ); codebooks 1..7 quantize the residual. So the first code of a frame
says what is spoken, which is what a small speech LM can learn from its text.

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
from vector_quantize_pytorch import ResidualVQ, VectorQuantize

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
        semantic = receptive_field_frames(7, cfg.semantic_blocks) if cfg.semantic_codebook else 0
        return ceil_div(fine, cfg.upsample) + receptive_field_frames(7, cfg.enc_blocks) + semantic + 1


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


class SemanticQuantizer(nn.Module):
    """Codebook 0 of a v3 codec: a VQ on a projection of the latent, with a CTC phoneme head on its output.

    `proj_out` starts at zero, so a codec warm-started from a plain RVQ decodes exactly as before at step 0;
    so does the adapter's output (`semantic_blocks`), so a codec that gains one quantizes as before at step 0.
    """

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.proj_in = nn.Linear(cfg.latent_dim, cfg.semantic_dim)
        self.adapter = None
        if cfg.semantic_blocks:
            out = nn.Conv1d(cfg.semantic_hidden, cfg.semantic_dim, 1)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.adapter = nn.Sequential(
                nn.Conv1d(cfg.latent_dim, cfg.semantic_hidden, 1),
                *[ConvNeXtBlock(cfg.semantic_hidden, 7, cfg.mlp_ratio) for _ in range(cfg.semantic_blocks)], out,
            )
        self.vq = VectorQuantize(
            dim=cfg.semantic_dim, codebook_size=cfg.codebook_size, decay=cfg.ema_decay, kmeans_init=cfg.kmeans_init,
            kmeans_iters=cfg.kmeans_iters, threshold_ema_dead_code=cfg.threshold_ema_dead_code,
            commitment_weight=cfg.commitment_weight,
        )
        self.proj_out = nn.Linear(cfg.semantic_dim, cfg.latent_dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        # A frame's phoneme from its code and its neighbours' (kernel 3: 120 ms), as CTC log-probabilities.
        self.phoneme_head = nn.Sequential(
            nn.Conv1d(cfg.semantic_dim, 256, 3, padding=1), nn.GELU(), nn.Conv1d(256, cfg.n_phonemes, 1),
        ) if cfg.n_phonemes else None

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """latent (B, T, D) -> (its part in latent space, the quantized vectors, codes (B, T), commitment)."""
        quantized, codes, commit = self.vq(self.project(latent))
        return self.proj_out(quantized), quantized, codes, commit.sum()

    def project(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (B, T, D) -> what the VQ quantizes (B, T, semantic_dim)."""
        z = self.proj_in(latent)
        if self.adapter is not None:
            z = z + self.adapter(latent.transpose(1, 2)).transpose(1, 2)
        return z

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, T) -> their part in latent space (B, T, D)."""
        return self.proj_out(self.vq.get_output_from_indices(codes))

    def phoneme_log_probs(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantized vectors (B, T, semantic_dim) -> CTC log-probabilities (B, T, n_phonemes)."""
        return self.phoneme_head(quantized.transpose(1, 2)).transpose(1, 2).log_softmax(-1)


class Codec(nn.Module):
    """Encoder + (semantic VQ +) residual VQ + decoder; `forward` is the training pass, the rest is inference."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.semantic = SemanticQuantizer(cfg) if cfg.semantic_codebook else None
        self.quantizer = ResidualVQ(
            dim=cfg.latent_dim,
            codebook_dim=cfg.codebook_dim,
            num_quantizers=cfg.num_quantizers - int(cfg.semantic_codebook),
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

    def quantize(self, latent: torch.Tensor, acoustic: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """latent (B, T, D) -> (quantized latent, codes (B, n_q, T), commitment); `acoustic=False` keeps codebook 0 only."""
        if self.semantic is None:
            quantized, codes, commit = self.quantizer(latent)
            return quantized, codes.transpose(1, 2), commit.sum()
        part, _, semantic_codes, commit = self.semantic(latent)
        if not acoustic:
            return part, semantic_codes[:, None], commit
        rest, codes, rest_commit = self.quantizer(latent - part)
        return part + rest, torch.cat([semantic_codes[:, None], codes.transpose(1, 2)], 1), commit + rest_commit.sum()

    # --- training -------------------------------------------------------------------------------
    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """wav (B, N), N a multiple of hop_length -> (reconstruction (B, N), commitment loss, codes (B, n_q, T))."""
        latent = self.encoder(wav)
        acoustic = True
        if self.training and self.cfg.quantizer_dropout > 0:
            # The library drops codebooks on every step; doing it on a share of steps keeps the
            # full-bitrate reconstruction strong while fewer codebooks still decode.
            dropout = random.random() < self.cfg.quantizer_dropout
            self.quantizer.quantize_dropout = dropout
            # With a semantic codebook, "the first 1" must decode too.
            acoustic = not (self.semantic is not None and random.random() < self.cfg.semantic_only_share)
        quantized, codes, commit = self.quantize(latent, acoustic)
        return self.decoder(quantized), commit, codes

    def phoneme_log_probs(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, N) -> CTC log-probabilities (B, T, n_phonemes) read from codebook 0 alone (v3 codecs)."""
        if self.semantic is None or self.semantic.phoneme_head is None:
            raise ValueError("this codec has no phonetic codebook 0 (config semantic_codebook / n_phonemes)")
        _, quantized, _, _ = self.semantic(self.encoder(self.pad_to_frames(wav)))
        return self.semantic.phoneme_log_probs(quantized)

    # --- inference ------------------------------------------------------------------------------
    def pad_to_frames(self, wav: torch.Tensor) -> torch.Tensor:
        """Zero-pad (B, N) audio on the right to a whole number of code frames (at least one)."""
        hop = self.cfg.hop_length
        frames = max(1, ceil_div(wav.shape[-1], hop))
        return F.pad(wav, (0, frames * hop - wav.shape[-1]))

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """(B, N) audio at 24 kHz -> codes (B, n_q, ceil(N / hop_length)) in one pass."""
        _, codes, _ = self.quantize(self.encoder(self.pad_to_frames(wav)))
        return codes if n_q is None else codes[:, :n_q]

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, k, T) with k <= num_quantizers (the first k codebooks) -> audio (B, T * hop_length)."""
        return self.decoder(self.dequantize(codes))

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, k, T) of the first k codebooks -> quantized latent (B, T, D)."""
        latent = 0
        if self.semantic is not None:
            latent, codes = self.semantic.from_codes(codes[:, 0]), codes[:, 1:]
            if codes.shape[1] == 0:
                return latent
        levels = len(self.quantizer.layers)
        if codes.shape[1] < levels:
            codes = F.pad(codes, (0, 0, 0, levels - codes.shape[1]), value=-1)
        return latent + self.quantizer.get_output_from_indices(codes.transpose(1, 2))

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
