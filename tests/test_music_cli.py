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


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    """An untrained tiny generator exported like `cadenza music train staria` does."""
    import torch

    from cadenza.core.checkpoint import save_pretrained
    from cadenza.staria.models import PRESETS, StariaSeq2Seq

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("generator") / "model"
    save_pretrained(StariaSeq2Seq(PRESETS["tiny"]), PRESETS["tiny"], directory, extra={"task": "staria"})
    return directory


def _generate(tiny_generator, midi_files, *args):
    good, _ = midi_files
    return runner.invoke(app, ["music", "generate", "--form", "AB", "--model", str(tiny_generator),
                               "--prompt", str(good[0]), "--max-tokens", "64", "--seed", "0", *args])


@pytest.mark.parametrize("args, option", [
    (["--num", "0"], "--num"), (["--num", "-2"], "--num"), (["--threads", "0"], "--threads"),
    (["--max-tokens", "0"], "--max-tokens"), (["--max-tokens", "20"], "--max-tokens"),
    (["--temperature", "-1"], "--temperature"), (["--top-p", "2"], "--top-p"), (["--top-p", "0"], "--top-p"),
    (["--min-p", "1.5"], "--min-p"), (["--repeat", "loop"], "--repeat"), (["--form", "ABX"], "--form"),
])
def test_generate_rejects_bad_options_naming_them(tiny_generator, midi_files, tmp_path, args, option):
    result = _generate(tiny_generator, midi_files, "--out", str(tmp_path / "x.mid"), *args)
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.mid").exists()


def test_generate_rejects_an_unwritable_output(tiny_generator, midi_files, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for args, option in ((["--out", str(blocker / "x.mid")], "--out"), (["--out", str(tmp_path)], "--out"),
                         (["--out-dir", str(blocker / "d")], "--out-dir"), (["--out-dir", str(blocker)], "--out-dir")):
        result = _generate(tiny_generator, midi_files, *args)
        assert result.exit_code == 2 and option in result.output, result.output


def test_generate_fails_on_a_missing_or_broken_prompt_and_model(tiny_generator, midi_files, tmp_path):
    _, bad = midi_files
    out = ["--out", str(tmp_path / "x.mid")]
    for args, words in (([*out, "--prompt", str(bad)], "broken.mid"),
                        ([*out, "--prompt", str(tmp_path / "none.mid")], "none.mid"),
                        ([*out, "--model", str(tmp_path / "no_model")], "no_model")):
        result = _generate(tiny_generator, midi_files, *args)
        assert result.exit_code == 1 and words in result.output, result.output
        assert isinstance(result.exception, SystemExit)  # an error message, not a traceback


def test_generate_writes_pieces(tiny_generator, midi_files, tmp_path):
    result = _generate(tiny_generator, midi_files, "--out-dir", str(tmp_path / "new" / "pieces"), "--num", "2")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "new" / "pieces").iterdir()) == ["AB_000.mid", "AB_001.mid"]


def test_music_commands_fail_cleanly_on_missing_or_non_midi_files(midi_files, tmp_path):
    _, bad = midi_files
    missing = tmp_path / "missing.mid"
    for args in (["tokenize", str(missing), "--out", str(tmp_path / "t.jsonl")],
                 ["detokenize", str(tmp_path / "missing.jsonl"), "--out-dir", str(tmp_path / "d")],
                 ["detokenize", str(bad), "--out-dir", str(tmp_path / "d")],
                 ["render", str(missing), "--out-dir", str(tmp_path / "w")],
                 ["render", str(bad), "--out-dir", str(tmp_path / "w")],
                 ["evaluate", str(tmp_path / "no_dir")],
                 ["eval-classifier", str(tmp_path / "no_model"), str(tmp_path / "no_corpus")]):
        result = runner.invoke(app, ["music", *args])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (args, result.output)


def test_version():
    from cadenza import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"cadenza {__version__}"
