"""`cadenza speech codec encode/decode` on files: batches with a bad file, --codebooks, exit codes."""

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from cadenza.cli import app
from test_codec import build_tiny_codec, speechlike

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_codec(tmp_path_factory.mktemp("cli_codec"))


@pytest.fixture
def wavs(tmp_path):
    good = []
    for k, sr in enumerate((24000, 16000, 48000)):
        path = tmp_path / f"clip{k}.wav"
        sf.write(path, speechlike(0.8, sr, seed=k), sr)
        good.append(path)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEfmt ")
    return good, bad


def test_encode_decode_round_trip_with_a_bad_file(model_dir, wavs, tmp_path):
    good, bad = wavs
    codes_dir, audio_dir = tmp_path / "codes", tmp_path / "audio"
    result = runner.invoke(app, ["speech", "codec", "encode", *map(str, [good[0], bad, *good[1:]]), "--out-dir", str(codes_dir), "--model", str(model_dir)])
    assert result.exit_code == 1
    assert "broken.wav" in result.output and "1 of 4 files failed" in result.output
    npys = sorted(codes_dir.glob("*.npy"))
    assert [p.stem for p in npys] == ["clip0", "clip1", "clip2"]
    for p in npys:
        codes = np.load(p)
        assert codes.shape == (8, 20) and np.issubdtype(codes.dtype, np.integer)
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy")
    result = runner.invoke(app, ["speech", "codec", "decode", *map(str, npys), str(junk), "--out-dir", str(audio_dir), "--model", str(model_dir)])
    assert result.exit_code == 1 and "junk.npy" in result.output
    for p in npys:
        info = sf.info(audio_dir / f"{p.stem}.wav")
        assert info.samplerate == 24000 and info.frames == 20 * 960


def test_fewer_codebooks(model_dir, wavs, tmp_path):
    good, _ = wavs
    result = runner.invoke(app, ["speech", "codec", "encode", str(good[0]), "--out-dir", str(tmp_path), "--codebooks", "3", "--model", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "clip0.npy").shape == (3, 20)
    result = runner.invoke(app, ["speech", "codec", "decode", str(tmp_path / "clip0.npy"), "--out-dir", str(tmp_path), "--model", str(model_dir)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["speech", "codec", "encode", str(good[0]), "--out-dir", str(tmp_path), "--codebooks", "9", "--model", str(model_dir)])
    assert result.exit_code == 1 and "between 1 and 8" in result.output


def test_missing_model_dir_is_a_clear_error(tmp_path, wavs):
    result = runner.invoke(app, ["speech", "codec", "encode", str(wavs[0][0]), "--out-dir", str(tmp_path), "--model", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "not a codec directory" in result.output
