"""`cadenza music tokenize/detokenize` and MIDI rendering, end to end on files."""

import json
import shutil

import pytest
import soundfile as sf
from typer.testing import CliRunner

from cadenza.cli import app
from cadenza.staria import StariaTokenizer
from cadenza.staria.midi import render_wav
from midi_samples import multitrack_midi

runner = CliRunner()


@pytest.fixture
def midi_files(tmp_path):
    good = []
    for seed in range(3):
        path = tmp_path / f"piece{seed}.mid"
        path.write_bytes(multitrack_midi(seed))
        good.append(path)
    bad = tmp_path / "broken.mid"
    bad.write_bytes(b"RIFF....WAVEfmt ")
    return good, bad


def test_tokenize_reports_bad_files_and_keeps_going(midi_files, tmp_path):
    good, bad = midi_files
    out = tmp_path / "tokens.jsonl"
    result = runner.invoke(app, ["music", "tokenize", str(good[0]), str(bad), str(good[1]), "--out", str(out)])
    assert result.exit_code == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [("tokens" in r) for r in rows] == [True, False, True]
    assert "broken.mid" in rows[1]["error"]


def test_detokenize_writes_midi_that_tokenizes_back(midi_files, tmp_path):
    good, _ = midi_files
    out = tmp_path / "tokens.jsonl"
    assert runner.invoke(app, ["music", "tokenize", *map(str, good), "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["music", "detokenize", str(out), "--out-dir", str(tmp_path / "midi")])
    assert result.exit_code == 0, result.output
    tok = StariaTokenizer()
    for row in map(json.loads, out.read_text().splitlines()):
        written = tmp_path / "midi" / (row["path"].rsplit("/", 1)[-1])
        assert tok.tokenize(written) == [tuple(t) if isinstance(t, list) else t for t in row["tokens"]]


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth not installed (make setup)")
def test_render_wav(tmp_path):
    wav = render_wav(multitrack_midi(0), tmp_path / "piece.wav", sample_rate=22050)
    audio, sr = sf.read(wav)
    assert sr == 22050 and audio.shape[0] > sr and abs(audio).max() > 0.01
