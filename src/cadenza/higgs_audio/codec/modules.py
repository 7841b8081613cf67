"""Building blocks of the codec: log-mel front end, ConvNeXt blocks, iSTFT head.

Everything is non-causal with a finite receptive field and no normalisation across time, so a
long signal can be processed in overlapping chunks and give the same result as one pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """Slaney-normalised triangular mel filters (HTK mel scale), shape (n_mels, n_fft // 2 + 1)."""
    f_max = f_max or sample_rate / 2

    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(hz_to_mel(torch.tensor(f_min)), hz_to_mel(torch.tensor(f_max)), n_mels + 2, dtype=torch.float64)
    hz = mel_to_hz(mels)
    lower, center, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs[None] - lower) / (center - lower)
    down = (upper - freqs[None]) / (upper - center)
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    fb = fb * (2.0 / (upper - lower))  # equal area per filter
    return fb.float()


class LogMel(nn.Module):
    """Log-mel spectrogram of (B, N) audio with 'same' framing: N / hop frames, no centre padding.

    Reflect padding of (n_fft - hop) / 2 on each side puts frame i's window centre at sample
    i * hop + hop / 2, so frames line up with code frames and with the iSTFT head.
    """

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int, pad: bool = True):
        super().__init__()
        self.n_fft, self.hop, self.pad = n_fft, hop, pad
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("fb", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if self.pad:
            p = (self.n_fft - self.hop) // 2
            wav = F.pad(wav[:, None], (p, p), mode="reflect")[:, 0]
        spec = torch.stft(wav, self.n_fft, self.hop, window=self.window, center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.fb, power)
        return torch.log(torch.clamp(mel, min=1e-5))  # (B, n_mels, frames)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv over time -> channel LayerNorm -> pointwise MLP, residual (Vocos style)."""

    def __init__(self, dim: int, kernel: int, mlp_ratio: float, layer_scale: float = 1e-2):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.pw1 = nn.Linear(dim, hidden)
        self.pw2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        h = self.dwconv(x).transpose(1, 2)
        h = self.pw2(F.gelu(self.pw1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class ISTFTHead(nn.Module):
    """Linear -> (log magnitude, phase) per fine frame -> inverse STFT with 'same' padding.

    Output length is frames * hop; sample t only depends on the frames whose windows cover it.
    """

    def __init__(self, dim: int, n_fft: int, hop: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.proj = nn.Linear(dim, n_fft + 2)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, T * hop)
        h = self.proj(x.transpose(1, 2)).transpose(1, 2)
        log_mag, phase = h.chunk(2, dim=1)
        mag = torch.exp(log_mag).clamp(max=1e2)
        # torch.polar(mag, phase), in vectorised cos and sin (polar's kernel is ~2x slower on a CPU)
        spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))
        return self.istft(spec)

    def istft(self, spec: torch.Tensor) -> torch.Tensor:
        frames = spec.shape[-1]
        out_len = (frames - 1) * self.hop + self.n_fft
        y = self._overlap_add(torch.fft.irfft(spec, self.n_fft, dim=1, norm="backward"), self.window)
        env = self._overlap_add(self.window.square()[None, :, None].expand(1, -1, frames))
        pad = (self.n_fft - self.hop) // 2
        y, env = y[:, pad : out_len - pad], env[:, pad : out_len - pad]
        return y / env.clamp(min=1e-11)

    def _overlap_add(self, frames: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
        """Frames (B, n_fft, F), each times `window` (n_fft,) if given, summed at hop spacing into
        (B, (F - 1) * hop + n_fft) samples: F.fold's sum, as one shifted (multiply-)add per hop-sized slice of
        the frame (4x faster than fold on a CPU)."""
        batch, n, count = frames.shape
        slices = ceil_div(n, self.hop)
        if slices * self.hop != n:
            frames = F.pad(frames, (0, 0, 0, slices * self.hop - n))
            window = None if window is None else F.pad(window, (0, slices * self.hop - n))
        parts = frames.view(batch, slices, self.hop, count).transpose(2, 3)  # (B, slices, F, hop)
        out = frames.new_zeros(batch, count + slices - 1, self.hop)
        for j in range(slices):
            if window is None:
                out[:, j : j + count] += parts[:, j]
            else:
                out[:, j : j + count].addcmul_(parts[:, j], window[j * self.hop : (j + 1) * self.hop])
        return out.view(batch, -1)[:, : (count - 1) * self.hop + n]


def receptive_field_frames(kernel: int, blocks: int) -> int:
    """One-sided reach, in frames, of `blocks` stacked convolutions of width `kernel`."""
    return blocks * (kernel // 2)


def ceil_div(a: int, b: int) -> int:
    """Integer ceiling of a / b."""
    return -(-a // b)


__all__ = ["LogMel", "ConvNeXtBlock", "ISTFTHead", "mel_filterbank", "receptive_field_frames", "ceil_div"]
