"""A cheap multi-resolution spectrogram discriminator for optional adversarial fine-tuning.

Each scale takes the log-magnitude STFT and treats frequency bins as channels, so its convolutions run
over time only (1-D): a few tens of MFLOPs per second of audio, instead of the GFLOPs of the 2-D
MS-STFT discriminator of EnCodec, which would more than double a training step on one CPU core.
Returns logits and intermediate feature maps for least-squares GAN and feature-matching losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

SCALES = (512, 1024, 2048)


class SpectrogramDiscriminator(nn.Module):
    """One resolution: log |STFT| (freq as channels) -> strided 1-D convs over time -> logits."""

    def __init__(self, n_fft: int, channels: int = 128):
        super().__init__()
        self.n_fft, self.hop = n_fft, n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        bins = n_fft // 2 + 1
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv1d(bins, channels, 5, padding=2)),
            weight_norm(nn.Conv1d(channels, channels, 5, stride=2, padding=2)),
            weight_norm(nn.Conv1d(channels, channels, 5, stride=2, padding=2)),
            weight_norm(nn.Conv1d(channels, channels, 3, padding=1)),
        ])
        self.out = weight_norm(nn.Conv1d(channels, 1, 3, padding=1))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = torch.stft(wav, self.n_fft, self.hop, window=self.window, return_complex=True).abs()
        x = torch.log(spec.clamp(min=1e-5))
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            features.append(x)
        return self.out(x), features


class MultiResolutionDiscriminator(nn.Module):
    """Spectrogram discriminators at several STFT sizes."""

    def __init__(self, scales: tuple[int, ...] = SCALES, channels: int = 128):
        super().__init__()
        self.discriminators = nn.ModuleList([SpectrogramDiscriminator(n, channels) for n in scales])

    def forward(self, wav: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [d(wav) for d in self.discriminators]


def discriminator_loss(real: list, fake: list) -> torch.Tensor:
    """Least-squares GAN loss of the discriminator: real -> 1, fake -> 0."""
    return sum(torch.mean((1 - r) ** 2) + torch.mean(f**2) for (r, _), (f, _) in zip(real, fake)) / len(real)


def generator_losses(real: list, fake: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(adversarial loss: fake -> 1, feature matching: L1 between real and fake feature maps, relative)."""
    adv = sum(torch.mean((1 - f) ** 2) for f, _ in fake) / len(fake)
    fm, n = 0.0, 0
    for (_, real_feats), (_, fake_feats) in zip(real, fake):
        for r, f in zip(real_feats, fake_feats):
            fm = fm + torch.mean(torch.abs(r.detach() - f)) / (torch.mean(torch.abs(r.detach())) + 1e-5)
            n += 1
    return adv, fm / max(1, n)
