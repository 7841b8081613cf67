"""Audio tokenizer speed: encode + decode real-time factor vs named baselines, same process, alternating rounds.

    python benchmarks/codec.py [--model DIR] [--seconds S] [--rounds R] [--threads T]

RTF = compute seconds / audio seconds (lower is faster; the issue's target is <= 0.02 on 2 cores).
Baselines, timed on the same audio in the same run:
- `stft_istft`: a plain torch STFT -> iSTFT round trip (n_fft 1024, hop 256), the floor any
  spectral codec pays;
- `transposed_conv_decoder`: our encoder + quantizer with an EnCodec/DAC-style decoder that
  upsamples 25 Hz -> 24 kHz with transposed convolutions (strides 8-5-4-6, 384 -> 24 channels,
  one residual conv unit per stage), the design the ConvNeXt + iSTFT decoder replaces.
Timings use random weights of the same shapes when the model has none (speed does not depend on them).
Writes benchmarks/results/codec.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cadenza.higgs_audio.codec.api import SHIPPED_DIR, load_codec
from cadenza.higgs_audio.codec.config import CodecConfig
from cadenza.higgs_audio.codec.model import Codec
from cadenza.higgs_audio.codec.train import load_codec_config

RESULTS = Path(__file__).parent / "results" / "codec.json"
SMALL_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "codec_small.yaml"


class TransposedConvDecoder(nn.Module):
    """EnCodec/DAC-style decoder: latent @25 Hz -> 4 transposed-conv upsampling stages -> waveform."""

    def __init__(self, latent_dim: int, channels: int = 384, strides: tuple[int, ...] = (8, 5, 4, 6)):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(latent_dim, channels, 7, padding=3)]
        ch = channels
        for s in strides:
            out = max(ch // 2, 24)
            layers += [nn.ELU(), nn.ConvTranspose1d(ch, out, 2 * s, stride=s, padding=s // 2 + s % 2, output_padding=s % 2),
                       ResidualUnit(out)]
            ch = out
        layers += [nn.ELU(), nn.Conv1d(ch, 1, 7, padding=3), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent.transpose(1, 2))[:, 0]


class ResidualUnit(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.block = nn.Sequential(nn.ELU(), nn.Conv1d(ch, ch, 7, padding=3), nn.ELU(), nn.Conv1d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call. CPU time is robust to other load on a
    shared machine; with one thread it is what the wall time would be on an idle core."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="codec directory (default: shipped, else random small)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = args.model or (SHIPPED_DIR if (SHIPPED_DIR / "model.safetensors").exists() else None)
    if model_dir is not None:
        codec, source = load_codec(model_dir), str(model_dir)
    else:
        codec, source = Codec(CodecConfig.from_dict(load_codec_config(SMALL_CONFIG)["model"])).eval(), "random weights, configs/codec_small.yaml"
    cfg = codec.cfg
    rng = np.random.default_rng(0)
    n = int(args.seconds * cfg.sample_rate)
    t = np.arange(n) / cfg.sample_rate
    wav = torch.from_numpy((0.2 * np.sin(2 * np.pi * 140 * t) + 0.02 * rng.standard_normal(n)).astype(np.float32))[None]
    codes = codec.encode(wav)  # k-means-initialises random codebooks once, outside the timing

    baseline_dec = TransposedConvDecoder(cfg.latent_dim).eval()
    window = torch.hann_window(1024)

    def ours() -> None:
        codec.decode(codec.encode(wav))

    def ours_encode() -> None:
        codec.encode(wav)

    def ours_decode() -> None:
        codec.decode(codes)

    @torch.inference_mode()
    def transposed() -> None:
        c = codec.encode(wav)
        baseline_dec(codec.dequantize(c))

    @torch.inference_mode()
    def stft_istft() -> None:
        spec = torch.stft(wav, 1024, 256, window=window, return_complex=True)
        torch.istft(spec, 1024, 256, window=window, length=n)

    runs = {"ours_encode": ours_encode, "ours_decode": ours_decode, "ours": ours, "transposed_conv_decoder": transposed, "stft_istft": stft_istft}
    for fn in runs.values():
        fn()  # warm-up
    seconds = {name: [] for name in runs}
    for _ in range(args.rounds):  # alternate so load changes hit every variant alike
        for name, fn in runs.items():
            seconds[name].append(timed(fn))
    rtf = {name: float(np.median([w for w, _ in v])) / args.seconds for name, v in seconds.items()}
    cpu_rtf = {name: float(np.median([c for _, c in v])) / args.seconds for name, v in seconds.items()}
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    result = {
        "model": source,
        "audio_seconds": args.seconds,
        "threads": args.threads,
        "rounds": args.rounds,
        "rtf": {k: round(v, 5) for k, v in rtf.items()},
        "cpu_rtf": {k: round(v, 5) for k, v in cpu_rtf.items()},
        "ratio_transposed_conv_over_ours": round(rtf["transposed_conv_decoder"] / rtf["ours"], 2),
        "ratio_ours_over_stft_istft": round(rtf["ours"] / rtf["stft_istft"], 2),
        "target_rtf": 0.02,
        # wall time on a shared, loaded machine overstates; CPU time with 1 thread is the idle-core wall time
        "meets_target_wall": rtf["ours"] <= 0.02,
        "meets_target_cpu": cpu_rtf["ours"] <= 0.02,
        "params": {"ours_decoder": n_params(codec.decoder), "transposed_conv_decoder": n_params(baseline_dec), "ours_encoder": n_params(codec.encoder)},
        "load_average_at_start": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    print(f"{'variant':28s} {'RTF wall':>9s} {'RTF cpu':>9s}  {'x realtime':>10s}")
    for name, value in rtf.items():
        print(f"{name:28s} {value:9.4f} {cpu_rtf[name]:9.4f}  {1 / value:10.0f}")
    print(f"transposed-conv decoder / ours: {result['ratio_transposed_conv_over_ours']}x slower; "
          f"ours / plain STFT-iSTFT: {result['ratio_ours_over_stft_istft']}x; target RTF <= 0.02: wall {result['meets_target_wall']}, cpu {result['meets_target_cpu']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
