"""Audio I/O shared by both systems: read/write with soundfile, mono mixdown, resampling, loudness.

Every reader validates what it returns: a file that is not audio, holds no samples, or holds NaN/inf
samples raises `AudioError` naming the input and the problem, never a bare library exception.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

PathLike = str | os.PathLike


class AudioError(ValueError):
    """Audio input that cannot be used: unreadable, empty, or with non-finite samples."""


def _name(source: object) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "audio array"


def validate_audio(wav: np.ndarray, name: str = "audio array") -> np.ndarray:
    """Check `wav` is a non-empty real float array without NaN/inf; return it as float32."""
    wav = np.asarray(wav)
    if wav.dtype.kind not in "fiu":
        raise AudioError(f"{name}: expected a numeric sample array, got dtype {wav.dtype}")
    if wav.ndim not in (1, 2):
        raise AudioError(f"{name}: expected 1-D (samples) or 2-D (samples, channels) audio, got shape {wav.shape}")
    if wav.size == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    if wav.dtype.kind in "iu":  # integer PCM: scale to [-1, 1]
        wav = wav.astype(np.float32) / float(np.iinfo(wav.dtype).max)
    wav = wav.astype(np.float32, copy=False)
    bad = ~np.isfinite(wav)
    if bad.any():
        raise AudioError(f"{name}: {int(bad.sum())} of {wav.size} samples are NaN or infinite")
    return wav


def to_mono(wav: np.ndarray) -> np.ndarray:
    """Average channels of a (samples, channels) array; a 1-D array is returned as it is.

    A (channels, samples) array with few rows and many columns is recognised and averaged too.
    """
    wav = np.asarray(wav)
    if wav.ndim == 1:
        return wav
    if wav.ndim != 2:
        raise AudioError(f"expected 1-D or 2-D audio, got shape {wav.shape}")
    channel_axis = 0 if wav.shape[0] < wav.shape[1] and wav.shape[0] <= 8 else 1
    return wav.mean(axis=channel_axis).astype(np.float32, copy=False)


def resample(wav: np.ndarray, sr_in: float, sr_out: float) -> np.ndarray:
    """Resample mono float audio from `sr_in` to `sr_out` Hz (soxr high quality).

    Rates may be fractional: reading samples as if recorded at `sr * f` and resampling shifts pitch by `f`."""
    if sr_in <= 0 or sr_out <= 0:
        raise AudioError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    if sr_in == sr_out:
        return np.asarray(wav, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(wav, dtype=np.float32), sr_in, sr_out, quality="HQ").astype(np.float32)


def audio_info(path: PathLike) -> sf._SoundFileInfo:
    """soundfile's info for `path`, or `AudioError` naming the file if it is missing or not audio."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from exc


def read_audio(path: PathLike, sr: int | None = None, mono: bool = True) -> tuple[np.ndarray, int]:
    """Read any format soundfile reads; optionally mix down to mono and resample to `sr`.

    Returns (float32 samples, sample rate). Raises `AudioError` naming the file when it is
    missing, not audio, empty, or contains NaN/inf samples.
    """
    info = audio_info(path)
    try:
        wav, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{path}: could not decode audio ({exc})") from exc
    if wav.shape[0] == 0:
        raise AudioError(f"{path}: audio is empty (0 samples, {info.format} {info.subtype})")
    wav = validate_audio(wav, str(path))
    wav = wav.mean(axis=1) if mono else wav
    if sr is not None and sr != file_sr:
        if not mono:
            wav = np.stack([resample(wav[:, c], file_sr, sr) for c in range(wav.shape[1])], axis=1)
        else:
            wav = resample(wav, file_sr, sr)
        file_sr = sr
    return np.ascontiguousarray(wav, dtype=np.float32), int(file_sr)


def read_audio_blocks(path: PathLike, block_seconds: float = 30.0) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (mono float32 block, sample rate) of a file block by block, for bounded memory.

    Each block is validated like `read_audio`; the file's own sample rate is kept.
    """
    info = audio_info(path)
    if info.frames == 0:
        raise AudioError(f"{path}: audio is empty (0 samples)")
    block = max(1, int(block_seconds * info.samplerate))
    try:
        for chunk in sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):
            yield validate_audio(chunk, str(path)).mean(axis=1), info.samplerate
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{path}: could not decode audio ({exc})") from exc


def write_audio(path: PathLike, wav: np.ndarray, sr: int, subtype: str = "PCM_16") -> Path:
    """Write audio (clipped to [-1, 1]) atomically; the format follows the file extension (default wav)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = np.clip(validate_audio(wav, str(path)), -1.0, 1.0)
    fmt = path.suffix.lstrip(".").upper() or "WAV"
    tmp = path.with_name(path.name + ".part")
    sf.write(str(tmp), wav, sr, subtype=subtype, format=fmt)
    os.replace(tmp, path)
    return path


def rms_dbfs(wav: np.ndarray) -> float:
    """Root-mean-square level in dBFS (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def normalize_loudness(wav: np.ndarray, target_dbfs: float = -23.0, peak: float = 0.99, floor_dbfs: float = -70.0) -> np.ndarray:
    """Scale audio to an RMS level of `target_dbfs`, never past `peak`; silence is returned unchanged.

    RMS is a cheap stand-in for LUFS that is good enough for speech without long pauses.
    """
    level = rms_dbfs(wav)
    if not np.isfinite(level) or level < floor_dbfs:
        return np.asarray(wav, dtype=np.float32)
    gain = 10.0 ** ((target_dbfs - level) / 20.0)
    top = float(np.max(np.abs(wav))) * gain
    if top > peak:
        gain *= peak / top
    return (np.asarray(wav, dtype=np.float32) * gain).astype(np.float32)


def load_mono(source: PathLike | np.ndarray, sr: int | None, target_sr: int) -> np.ndarray:
    """A path or an array (mono or stereo, at `sr`) as validated mono float32 at `target_sr`.

    An array needs its sample rate `sr` unless it is already at `target_sr`.
    """
    if isinstance(source, (str, os.PathLike)):
        wav, _ = read_audio(source, sr=target_sr, mono=True)
        return wav
    if hasattr(source, "detach"):  # torch tensor
        source = source.detach().cpu().numpy()
    wav = validate_audio(np.asarray(source), _name(source))
    wav = to_mono(np.squeeze(wav) if wav.ndim == 2 and 1 in wav.shape else wav)
    return resample(wav, sr or target_sr, target_sr)
