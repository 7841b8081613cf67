"""`cadenza speech voices` and `cadenza speech generate` (single, streamed, batch) on a tiny random model."""

from __future__ import annotations

import json
import re

import soundfile as sf
from typer.testing import CliRunner

from cadenza.cli import app
from cadenza.higgs_audio.engine import SHIPPED_MODEL

runner = CliRunner()


def _generate(model, *args, steps: int = 29):
    """`cadenza speech generate` with `steps` decode steps: 29 = 20 frames, enough for 2 words at a reading pace."""
    return runner.invoke(app, ["speech", "generate", "--model", str(model), "--max-new-tokens", str(steps), *args])


def test_voices_lists_the_shipped_presets():
    result = runner.invoke(app, ["speech", "voices"])
    assert result.exit_code == 0, result.output
    names = [line.split("\t")[0] for line in result.output.splitlines()]
    assert "joe" in names and "slt" in names
    joe_line = next(line for line in result.output.splitlines() if line.startswith("joe\t"))
    assert len(joe_line.split("\t")[1]) > 10  # with its transcript


def test_generate_writes_a_24k_wav(tiny_speech_model, tmp_path):
    out = tmp_path / "hello.wav"
    result = _generate(tiny_speech_model, "--transcript", "Hello there.", "--voice", "joe", "--out", str(out), "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "stopped at --max-new-tokens before the model finished" in result.output  # a random model never stops
    info = sf.info(out)
    assert info.samplerate == 24000 and info.channels == 1
    assert info.frames == (29 - 8 - 1) * 960  # 29 decode steps: 20 frames of the shipped codec's hop
    again = tmp_path / "again.wav"
    assert _generate(tiny_speech_model, "--transcript", "Hello there.", "--voice", "joe", "--out", str(again), "--seed", "1").exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_generate_reads_a_transcript_file_and_takes_long_text(tiny_speech_model, tmp_path):
    text_file = tmp_path / "t.txt"
    text_file.write_text("How are you today?")
    assert _generate(tiny_speech_model, "--transcript", str(text_file), "--out", str(tmp_path / "a.wav")).exit_code == 0
    long_text = "This is a fairly long sentence " * 12  # longer than a file name may be
    result = _generate(tiny_speech_model, "--transcript", long_text, "--out", str(tmp_path / "b.wav"))
    assert result.exit_code == 0, result.output


def test_unknown_voice_is_named(tiny_speech_model, tmp_path):
    result = _generate(tiny_speech_model, "--transcript", "Hello.", "--voice", "nobody", "--out", str(tmp_path / "x.wav"))
    assert result.exit_code == 1
    assert "nobody" in result.output and "joe" in result.output  # names the bad voice and the valid ones
    assert not (tmp_path / "x.wav").exists()


def test_missing_reference_audio_is_a_clear_error(tiny_speech_model, tmp_path):
    missing = tmp_path / "ref.wav"
    result = _generate(tiny_speech_model, "--transcript", "Hello.", "--ref-audio", str(missing), "--ref-text", "Hi.",
                       "--out", str(tmp_path / "x.wav"))
    assert result.exit_code == 1
    assert f"reference audio {missing}: no such file" in result.output
    result = _generate(tiny_speech_model, "--transcript", "Hello.", "--ref-audio", str(missing), "--out", str(tmp_path / "x.wav"))
    assert result.exit_code == 1 and "--ref-text" in result.output


def test_cloning_a_reference_file(tiny_speech_model, tmp_path):
    from cadenza.higgs_audio.speak import VOICES_DIR

    ref = VOICES_DIR / "slt.wav"
    out = tmp_path / "clone.wav"
    result = _generate(tiny_speech_model, "--transcript", "[SPEAKER0] Hello. [SPEAKER1] Hi.", "--ref-audio", f"{ref},{ref}",
                       "--ref-text", "One.|Two.", "--ref-in-system", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sf.info(out).frames > 0
    both = _generate(tiny_speech_model, "--transcript", "Hi.", "--voice", "joe", "--ref-audio", str(ref), "--ref-text", "x",
                     "--out", str(out))
    assert both.exit_code == 1 and "not both" in both.output


def test_missing_model_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["speech", "generate", "--model", str(tmp_path), "--transcript", "Hi.", "--out", str(tmp_path / "x.wav")])
    assert result.exit_code == 1 and "not a Higgs Audio model directory" in result.output
    missing = tmp_path / "nowhere"
    result = runner.invoke(app, ["speech", "generate", "--model", str(missing), "--transcript", "Hi.", "--out", str(tmp_path / "x.wav")])
    assert result.exit_code == 1 and f"{missing}: no such directory" in result.output
    if not (SHIPPED_MODEL / "config.json").is_file():
        assert "the shipped speech model is missing" in result.output
        result = runner.invoke(app, ["speech", "generate", "--transcript", "Hi.", "--out", str(tmp_path / "x.wav")])
        assert result.exit_code == 1 and "the shipped speech model is missing" in result.output


def test_a_transcript_too_long_for_one_piece_is_said_in_chunks_or_refused(tiny_speech_model, build_tiny_speech_model,
                                                                          tmp_path):
    """60 words cannot be said in 49 decode steps (1.6 s): they are said in chunks of 4 words, not cut to 1.6 s;
    a stream, which says its text in one piece, and a model whose context cannot hold the steps are refused."""
    text, out = "The cat sat on the mat. " * 10, tmp_path / "long.wav"
    result = _generate(tiny_speech_model, "--transcript", text, "--out", str(out), "--seed", "3", steps=49)
    assert result.exit_code == 0, result.output
    assert f"{out}: " in result.output and " in 20 chunks" in result.output  # each 6-word sentence in two
    assert sf.info(out).frames > 10 * (49 - 8 - 1) * 960
    result = _generate(tiny_speech_model, "--transcript", text, "--out", str(tmp_path / "s.wav"), "--stream", steps=49)
    assert result.exit_code == 1 and not (tmp_path / "s.wav").exists()
    assert "(239 characters, 60 words) cannot be streamed in one piece" in result.output
    assert "give at least 609, or say it without streaming" in result.output
    small = build_tiny_speech_model(tmp_path / "model", max_position_embeddings=200)
    result = _generate(small, "--transcript", text, "--out", str(out), steps=100)
    assert result.exit_code == 1
    assert "context of 200: give a lower max_new_tokens" in result.output


def test_batch_skips_and_reports_bad_lines(tiny_speech_model, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join([
        json.dumps({"id": "good", "transcript": "Hello there.", "voice": "joe", "seed": 1}),
        '{"id": "broken", "transcript": ',
        json.dumps({"id": "silent"}),
    ]) + "\n")
    out_dir = tmp_path / "out"
    result = _generate(tiny_speech_model, "--batch", str(requests), "--out-dir", str(out_dir))
    assert result.exit_code == 1
    assert sorted(p.name for p in out_dir.iterdir()) == ["good.wav"]
    assert sf.info(out_dir / "good.wav").samplerate == 24000
    assert f"{requests}:2: skipped" in result.output
    assert f"{requests}:3: skipped" in result.output and "transcript" in result.output
    assert ":1: skipped" not in result.output


def test_stream_reports_time_to_first_audio(tiny_speech_model, tmp_path):
    out = tmp_path / "streamed.wav"
    result = runner.invoke(app, ["speech", "generate", "--model", str(tiny_speech_model), "--max-new-tokens", "40",
                                 "--transcript", "Hello there.", "--voice", "joe", "--out", str(out), "--seed", "2",
                                 "--stream"])
    assert result.exit_code == 0, result.output
    assert re.search(r"first audio after \d+ ms", result.output)
    chunked = runner.invoke(app, ["speech", "generate", "--model", str(tiny_speech_model), "--transcript", "Hi.", "--out",
                                  str(tmp_path / "c.wav"), "--stream", "--chunk-method", "word"])
    assert chunked.exit_code == 1 and "--chunk-method" in chunked.output
    takes = runner.invoke(app, ["speech", "generate", "--model", str(tiny_speech_model), "--transcript", "Hi.", "--out",
                                str(tmp_path / "t.wav"), "--stream", "--best-of", "2"])
    assert takes.exit_code == 1 and "--best-of" in takes.output
    plain = tmp_path / "plain.wav"
    runner.invoke(app, ["speech", "generate", "--model", str(tiny_speech_model), "--max-new-tokens", "40",
                        "--transcript", "Hello there.", "--voice", "joe", "--out", str(plain), "--seed", "2"])
    streamed, _ = sf.read(out)
    whole, _ = sf.read(plain)
    assert streamed.shape == whole.shape == ((40 - 8 - 1) * 960,)
    assert abs(streamed - whole).max() <= 1 / 32767  # the same audio, up to 16-bit rounding


def test_codec_commands_take_codec_and_still_read_the_old_model_spelling(tmp_path):
    """`--model` is the speech LM everywhere; commands that take only the audio tokenizer call it --codec."""
    for option in ("--codec", "--model"):
        result = runner.invoke(app, ["speech", "codec", "decode", "x.npy", "--out-dir", str(tmp_path), option,
                                     str(tmp_path / "nowhere")])
        assert result.exit_code == 1 and "nowhere: not a codec directory" in result.output
    help_text = runner.invoke(app, ["speech", "encode-corpus", "--help"]).output
    assert "--codec" in help_text and "--model" not in help_text


def test_model_helps_name_the_default_and_a_missing_model_is_named_missing(tmp_path):
    """The --model / --speech-model helps say what the default is (the shipped preview), and a missing directory
    is named as missing (not as "not a model directory")."""
    import typer.main

    commands = typer.main.get_command(app).commands
    speech = commands["speech"].commands
    options = [(commands["serve"], "speech_model"), (speech["generate"], "model"), (speech["eval"], "model")]
    for command, name in options:
        help_text = next(p.help for p in command.params if p.name == name)
        assert "default: the shipped preview" in help_text and "higgs_audio_small" in help_text, help_text
    missing = tmp_path / "nowhere"
    result = runner.invoke(app, ["serve", "--speech-model", str(missing), "--voices-dir", str(tmp_path)])
    assert result.exit_code == 1 and f"{missing}: no such directory" in result.output
    assert "not a Higgs Audio model directory" not in result.output
