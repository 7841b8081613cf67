"""PNG plots from plain arrays: a piano roll with shaded sections, and a spectrogram.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so plotting
works headless and never disturbs a caller that uses another backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
TRACK_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
                "#7f7f7f", "#bcbd22")
SECTION_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def _save(fig: Figure, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out_png, dpi=fig.dpi)
    return out_png


def piano_roll_png(onset_ms: Sequence[float], duration_ms: Sequence[float], pitch: Sequence[int],
                   instrument_or_track: Sequence[int], out_png: str | Path,
                   sections: Sequence[tuple[float, float, str]] = (), title: str | None = None,
                   track_names: Mapping[int, str] | None = None) -> Path:
    """Draw notes as bars (one colour per instrument/track) over shaded, labelled sections; write a PNG.

    `sections` are (start_ms, end_ms, label); sections with the same label share a colour. Notes with a
    zero duration (drums) are drawn as short ticks.
    """
    onset = np.asarray(onset_ms, dtype=np.float64) / 1000
    duration = np.maximum(np.asarray(duration_ms, dtype=np.float64) / 1000, 0.06)
    pitch = np.asarray(pitch, dtype=np.int64)
    track = np.asarray(instrument_or_track, dtype=np.int64)
    if not (len(onset) == len(duration) == len(pitch) == len(track)):
        raise ValueError(f"note arrays differ in length: onset {len(onset)}, duration {len(duration)}, "
                         f"pitch {len(pitch)}, track {len(track)}")
    end_s = max([float((onset + duration).max()) if len(onset) else 1.0,
                 *(e / 1000 for _, e, _ in sections)])
    fig = Figure(figsize=(min(max(8.0, end_s / 4), 24.0), 5.0), dpi=100)
    ax = fig.add_subplot()

    labels = list(dict.fromkeys(label for _, _, label in sections))
    for start, end, label in sections:
        color = SECTION_COLORS[labels.index(label) % len(SECTION_COLORS)]
        ax.axvspan(start / 1000, end / 1000, color=color, alpha=0.13, lw=0)
        ax.axvline(start / 1000, color=color, lw=1.2, alpha=0.8)
        ax.text((start + end) / 2000, 1.0, label, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=12, fontweight="bold", color=color)

    for k, t in enumerate(np.unique(track)):
        sel = track == t
        name = (track_names or {}).get(int(t), f"track {t}")
        ax.barh(pitch[sel], duration[sel], left=onset[sel], height=0.8, color=TRACK_COLORS[k % len(TRACK_COLORS)],
                edgecolor="none", label=name)

    low, high = (int(pitch.min()) - 2, int(pitch.max()) + 2) if len(pitch) else (48, 84)
    ticks = [p for p in range(low, high + 1) if p % 12 == 0] or [low]
    ax.set_yticks(ticks, [f"{NOTE_NAMES[p % 12]}{p // 12 - 1}" for p in ticks])
    ax.set_ylim(low, high)
    ax.set_xlim(0, end_s)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("pitch")
    ax.grid(axis="y", alpha=0.3)
    if len(np.unique(track)) > 1:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    if title:
        ax.set_title(title, pad=18)
    fig.tight_layout()
    return _save(fig, out_png)


def spectrogram_png(wav: np.ndarray, sr: int, out_png: str | Path, title: str | None = None,
                    n_fft: int = 1024, hop: int = 256) -> Path:
    """Log-magnitude STFT (dB, Hann window) of a mono or (samples, channels) signal; write a PNG."""
    wav = np.asarray(wav, dtype=np.float64)
    if wav.ndim == 2:
        wav = wav.mean(axis=1)
    if wav.ndim != 1 or len(wav) == 0:
        raise ValueError(f"expected a non-empty 1-D or (samples, channels) signal, got shape {wav.shape}")
    padded = np.pad(wav, (n_fft // 2, n_fft // 2 + (-len(wav)) % hop))
    n_frames = 1 + (len(padded) - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]
    magnitude = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)).T
    db = 20 * np.log10(np.maximum(magnitude, 1e-10))
    db = np.maximum(db, db.max() - 80)  # 80 dB of dynamic range

    fig = Figure(figsize=(10, 4), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(db, origin="lower", aspect="auto", cmap="magma",
                      extent=(0, len(wav) / sr, 0, sr / 2))
    fig.colorbar(image, ax=ax, label="dB")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, out_png)


def curves_png(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], out_png: str | Path,
               title: str | None = None, ylabel: str | None = None, xlabel: str = "step") -> Path:
    """Line plot of named (x, y) series, e.g. training curves of several runs; write a PNG."""
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot()
    for name, (x, y) in series.items():
        ax.plot(np.asarray(x), np.asarray(y), label=name, marker="o" if len(x) < 40 else None, markersize=3)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_png)
