"""core.audio: reading any soundfile format, mixdown, resampling, loudness, and clear errors."""

import numpy as np
import pytest
import soundfile as sf

from cadenza.core.audio import (
    AudioError,
    load_mono,
    normalize_loudness,
    read_audio,
    read_audio_blocks,
    resample,
    rms_dbfs,
    to_mono,
    validate_audio,
    write_audio,
)


def tone(seconds=0.5, sr=24000, freq=220.0):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg"])
def test_read_formats_and_resample(tmp_path, fmt):
    path = tmp_path / f"a.{fmt}"
    sf.write(path, tone(sr=16000), 16000)
    wav, sr = read_audio(path, sr=24000)
    assert sr == 24000 and wav.dtype == np.float32
    assert abs(len(wav) - 12000) <= 2


def test_stereo_mixdown_file_and_array(tmp_path):
    left, right = tone(), np.zeros(12000, np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 24000)
    wav, _ = read_audio(tmp_path / "s.wav")
    assert wav.ndim == 1 and np.allclose(wav, left / 2, atol=1e-4)
    assert np.allclose(to_mono(np.stack([left, right], 0)), left / 2)  # (channels, samples) too
    assert np.allclose(load_mono(np.stack([left, right], 1), 24000, 24000), left / 2)


def test_write_read_roundtrip(tmp_path):
    path = write_audio(tmp_path / "out" / "x.wav", tone(), 24000)
    wav, sr = read_audio(path)
    assert sr == 24000 and np.allclose(wav, tone(), atol=1e-4)
    assert not list(path.parent.glob("*.part"))


def test_errors_name_the_input(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 24000)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x01\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    for path, words in [(empty, "empty"), (text, "not a readable audio"), (corrupt, ""), (tmp_path / "missing.wav", "no such file"), (tmp_path, "directory")]:
        with pytest.raises(AudioError) as info:
            read_audio(path)
        assert str(path) in str(info.value) and words in str(info.value)


def test_nonfinite_and_empty_arrays():
    with pytest.raises(AudioError, match="NaN or infinite"):
        validate_audio(np.array([0.0, np.nan, 0.1]))
    with pytest.raises(AudioError, match="NaN or infinite"):
        validate_audio(np.array([0.0, np.inf]))
    with pytest.raises(AudioError, match="empty"):
        validate_audio(np.zeros(0))
    with pytest.raises(AudioError, match="dtype"):
        validate_audio(np.array(["a"]))
    assert validate_audio(np.array([0, 32767], np.int16)).max() == pytest.approx(1.0)


def test_nan_in_file(tmp_path):
    path = tmp_path / "nan.wav"
    wav = tone()
    wav[100] = np.nan
    sf.write(path, wav, 24000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav"):
        read_audio(path)


def test_loudness_normalisation():
    quiet = tone() * 0.01
    out = normalize_loudness(quiet, -23.0)
    assert rms_dbfs(out) == pytest.approx(-23.0, abs=0.1)
    silence = np.zeros(1000, np.float32)
    assert np.array_equal(normalize_loudness(silence), silence)
    loud = normalize_loudness(tone(), 0.0)  # would clip: peak-limited instead
    assert np.abs(loud).max() <= 0.99 + 1e-6


def test_blocks_cover_the_file(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, tone(seconds=2.5), 24000)
    blocks = list(read_audio_blocks(path, block_seconds=1.0))
    assert [len(b) for b, _ in blocks] == [24000, 24000, 12000]


def test_resample_identity_and_bad_rate():
    x = tone()
    assert resample(x, 24000, 24000) is not None and len(resample(x, 24000, 8000)) == 4000
    with pytest.raises(AudioError):
        resample(x, 0, 24000)
