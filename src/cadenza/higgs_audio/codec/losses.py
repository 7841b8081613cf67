"""Reconstruction losses of the codec: multi-resolution log-mel L1 and multi-resolution STFT.

No adversarial loss: on one CPU core a discriminator would double the cost of a step, and within a
few hours of training the spectral losses are what moves intelligibility and voice similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cadenza.higgs_audio.codec.modules import mel_filterbank

MEL_SCALES = ((256, 64, 32), (512, 128, 64), (1024, 256, 100), (2048, 512, 128))  # (n_fft, hop, n_mels)
STFT_SCALES = ((512, 128), (1024, 256), (2048, 512))


class MultiResolutionMelLoss(nn.Module):
    """Mean over scales of L1 between log-mel spectrograms (DAC/Vocos style)."""

    def __init__(self, sample_rate: int, scales: tuple[tuple[int, int, int], ...] = MEL_SCALES):
        super().__init__()
        self.scales = scales
        for i, (n_fft, _, n_mels) in enumerate(scales):
            self.register_buffer(f"fb{i}", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)
            self.register_buffer(f"win{i}", torch.hann_window(n_fft), persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = pred.new_zeros(())
        for i, (n_fft, hop, _) in enumerate(self.scales):
            fb, win = getattr(self, f"fb{i}"), getattr(self, f"win{i}")
            mels = []
            for wav in (pred, target):
                spec = torch.stft(wav, n_fft, hop, window=win, return_complex=True).abs()
                mels.append(torch.log10(torch.clamp(fb @ spec, min=1e-5)))
            total = total + F.l1_loss(mels[0], mels[1])
        return total / len(self.scales)


class MultiResolutionSTFTLoss(nn.Module):
    """Mean over scales of spectral convergence + log-magnitude L1 (Parallel WaveGAN style)."""

    def __init__(self, scales: tuple[tuple[int, int], ...] = STFT_SCALES):
        super().__init__()
        self.scales = scales
        for i, (n_fft, _) in enumerate(scales):
            self.register_buffer(f"win{i}", torch.hann_window(n_fft), persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = pred.new_zeros(())
        for i, (n_fft, hop) in enumerate(self.scales):
            win = getattr(self, f"win{i}")
            p = torch.stft(pred, n_fft, hop, window=win, return_complex=True).abs().clamp(min=1e-7)
            t = torch.stft(target, n_fft, hop, window=win, return_complex=True).abs().clamp(min=1e-7)
            convergence = torch.linalg.norm(t - p) / torch.linalg.norm(t).clamp(min=1e-7)
            total = total + convergence + F.l1_loss(torch.log(p), torch.log(t))
        return total / len(self.scales)


class CodecLoss(nn.Module):
    """Weighted sum of mel, STFT and commitment losses; returns (total, parts for logging)."""

    def __init__(self, sample_rate: int, mel_weight: float = 15.0, stft_weight: float = 1.0, commit_weight: float = 1.0):
        super().__init__()
        self.mel = MultiResolutionMelLoss(sample_rate)
        self.stft = MultiResolutionSTFTLoss()
        self.mel_weight, self.stft_weight, self.commit_weight = mel_weight, stft_weight, commit_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor, commit: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mel = self.mel(pred, target)
        stft = self.stft(pred, target) if self.stft_weight else pred.new_zeros(())
        total = self.mel_weight * mel + self.stft_weight * stft + self.commit_weight * commit
        return total, {"mel": mel.detach(), "stft": stft.detach(), "commit": commit.detach()}
