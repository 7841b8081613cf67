"""The audio tokenizer: shapes, any rate / channels in, bad input, chunked = whole, save/load, training.

Every test uses a tiny randomly initialised codec (configs/codec_tiny.yaml sizes), never the shipped one
unless the test is about it.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from cadenza.core.audio import AudioError
from cadenza.core.checkpoint import ConfigError
from cadenza.cli import app
from cadenza.higgs_audio.codec import load_audio_tokenizer
from cadenza.higgs_audio.codec.api import SHIPPED_DIR, codec_fingerprint, load_codec, save_codec
from cadenza.higgs_audio.codec.config import CodecConfig
from cadenza.higgs_audio.codec.model import Codec, Decoder
from cadenza.higgs_audio.codec.train import load_codec_config

torch.set_num_threads(1)  # tiny models: threads only add overhead (and fight other work on 2 cores)
TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "codec_tiny.yaml"
SR = 24000


def tiny_config() -> CodecConfig:
    return CodecConfig.from_dict(load_codec_config(TINY_CONFIG)["model"])


def build_tiny_codec(out_dir: Path) -> Path:
    """A random tiny codec whose codebooks are k-means initialised on noise, saved to out_dir."""
    torch.manual_seed(0)
    model = Codec(tiny_config())
    model.train()
    model.quantizer.quantize_dropout = False  # every codebook sees the init batch
    with torch.no_grad():
        model.quantizer(model.encoder(torch.randn(2, 48000) * 0.1))
    assert all(bool(layer._codebook.initted) for layer in model.quantizer.layers)
    return save_codec(model.eval(), out_dir)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_audio_tokenizer(build_tiny_codec(tmp_path_factory.mktemp("codec")))


def speechlike(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / sr) / k for k in range(1, 8))
    return (0.2 * voiced * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def test_api_properties(tok):
    assert (tok.sampling_rate, tok.tps, tok.num_codebooks, tok.codebook_size) == (24000, 25, 8, 1024)


def test_encode_decode_shapes(tok):
    codes = tok.encode(speechlike(1.0), sr=SR)
    assert codes.dtype == torch.long and tuple(codes.shape) == (8, 25)
    assert int(codes.min()) >= 0 and int(codes.max()) < 1024
    audio = tok.decode(codes)
    assert audio.dtype == np.float32 and audio.shape == (25 * 960,) and np.isfinite(audio).all()
    assert tuple(tok.encode(speechlike(1.01), sr=SR).shape) == (8, 26)  # ceil(seconds * 25)


@pytest.mark.parametrize("sr", [8000, 16000, 44100, 48000])
def test_any_sample_rate(tok, sr):
    assert tuple(tok.encode(speechlike(0.8, sr), sr=sr).shape) == (8, 20)


def test_stereo_in(tok, tmp_path):
    mono = speechlike(0.8)
    stereo = np.stack([mono, mono], axis=1)
    ref = tok.encode(mono, sr=SR)
    assert torch.equal(tok.encode(stereo, sr=SR), ref)
    assert torch.equal(tok.encode(stereo.T.copy(), sr=SR), ref)  # (channels, samples)
    sf.write(tmp_path / "stereo.wav", stereo, SR, subtype="FLOAT")
    assert torch.equal(tok.encode(tmp_path / "stereo.wav"), ref)
    assert torch.equal(tok.encode(torch.from_numpy(mono), sr=SR), ref)


def test_silence_and_tiny_inputs(tok):
    codes = tok.encode(np.zeros(SR, np.float32), sr=SR)
    assert tuple(codes.shape) == (8, 25) and np.isfinite(tok.decode(codes)).all()
    assert tuple(tok.encode(np.full(10, 0.1, np.float32), sr=SR).shape) == (8, 1)


def test_bad_inputs_raise_clear_errors(tok, tmp_path):
    with pytest.raises(AudioError, match="empty"):
        tok.encode(np.zeros(0, np.float32), sr=SR)
    with pytest.raises(AudioError, match="NaN or infinite"):
        tok.encode(np.array([0.0, np.nan] * 100, np.float32), sr=SR)
    with pytest.raises(AudioError, match="NaN or infinite"):
        tok.encode(np.array([0.0, np.inf] * 100, np.float32), sr=SR)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"definitely not a wav file" * 10)
    with pytest.raises(AudioError, match="junk.wav"):
        tok.encode(junk)
    with pytest.raises(AudioError, match="no such file"):
        tok.encode(tmp_path / "missing.wav")


def test_bad_codes_raise_clear_errors(tok):
    good = tok.encode(speechlike(0.4), sr=SR)
    for bad, words in [(good + 1024, "must lie in"), (good.float(), "integers"), (good[0], "shape"),
                       (good[:, :0], "empty"), (torch.cat([good, good]), "codebooks")]:
        with pytest.raises(ValueError, match=words):
            tok.decode(bad)


def test_fewer_codebooks_decode(tok):
    codes = tok.encode(speechlike(0.8), sr=SR)
    for k in (1, 4, 8):
        assert tok.decode(codes[:k]).shape == (20 * 960,)
    assert tok.decode(codes.numpy().astype(np.int16)[None]).shape == (20 * 960,)  # (1, 8, T) numpy


def test_chunked_decode_matches_whole(tok):
    codes = tok.encode(speechlike(3.0), sr=SR)
    whole = tok.model.decode(codes[None])[0].numpy()
    for chunk in (4, 25):
        chunks = list(tok.decode_stream(codes, chunk_frames=chunk))
        assert len(chunks) == -(-75 // chunk)
        assert np.allclose(np.concatenate(chunks), whole, atol=1e-5)
    assert tok.lookahead_frames == Decoder.reach_frames(tok.cfg)


def test_streaming_decoder_matches_whole(tok):
    codes = tok.encode(speechlike(2.0), sr=SR)
    whole = tok.model.decode(codes[None])[0].numpy()
    stream = tok.streaming_decoder()
    parts, sizes = [], [1, 3, 7, 2, 13, 24]
    start = 0
    for n in sizes:
        parts.append(stream.push(codes[:, start : start + n]))
        start += n
    assert sum(len(p) for p in parts) == (50 - tok.lookahead_frames) * 960  # all but the lookahead
    parts.append(stream.flush())
    assert np.allclose(np.concatenate(parts), whole, atol=1e-5)
    assert stream.buffer.shape[1] <= 2 * tok.lookahead_frames + max(sizes)


def test_streaming_decoder_returns_chunks_of_the_asked_size(tok):
    codes = tok.encode(speechlike(2.0), sr=SR)
    whole = tok.model.decode(codes[None])[0].numpy()
    stream = tok.streaming_decoder(chunk_frames=5, first_chunk_frames=2)
    parts = [stream.push(codes[:, t : t + 1]) for t in range(50)]
    sizes = [len(p) // 960 for p in parts if len(p)]
    assert [len(p) > 0 for p in parts].index(True) == tok.lookahead_frames + 1  # 2 frames with their lookahead
    assert sizes == [2] + [5] * ((50 - tok.lookahead_frames - 2) // 5)
    parts.append(stream.flush())
    assert np.allclose(np.concatenate(parts), whole, atol=1e-5)
    with pytest.raises(ValueError, match="at least one frame"):
        tok.streaming_decoder(chunk_frames=0)


def test_batch_streaming_decoder_matches_each_stream_whole(tok, monkeypatch):
    """Streams of different lengths, codebook counts and chunk sizes; those due together with windows of one
    length share a codec call, and each stream's audio equals its whole decode."""
    streams = [tok.encode(speechlike(seconds, seed=k), sr=SR) for k, seconds in enumerate((2.0, 2.0, 1.2, 2.0))]
    streams[3] = streams[3][:4]  # the first 4 codebooks only
    chunks = [5, 5, 5, 3]
    wholes = [tok.model.decode(c[None])[0].numpy() for c in streams]
    batch = tok.batch_streaming_decoder(chunks, [1, 1, 1, None])
    calls, decode = [], tok.model.decode
    monkeypatch.setattr(tok.model, "decode", lambda codes: calls.append(tuple(codes.shape)) or decode(codes))
    parts: list[list[np.ndarray]] = [[] for _ in streams]
    for t in range(51):  # a frame per stream per push; a stream ends at the push after its last frame
        new = [c[:, t : t + 1] if t < c.shape[1] else None for c in streams]
        for part, audio in zip(parts, batch.push(new, [t == c.shape[1] for c in streams])):
            if audio is not None:
                part.append(audio)
    for part, whole in zip(parts, wholes):
        assert np.allclose(np.concatenate(part), whole, atol=1e-5)
    assert (2, 8, 5 + 2 * tok.lookahead_frames) in calls  # streams 0 and 1 in one call
    assert max(batch_size for batch_size, *_ in calls) == 3  # stream 2 too, while its windows match theirs
    with pytest.raises(ValueError, match="pushes"):
        batch.push([None])


def test_chunked_encode_matches_whole(tok):
    x = torch.from_numpy(speechlike(4.0))[None]
    whole = tok.model.encode(x)
    chunked = tok.model.encode_chunked(x, chunk_frames=20)
    assert chunked.shape == whole.shape
    assert (chunked == whole).float().mean() > 0.99  # float ties aside, identical


def test_ten_minute_file_is_encoded_in_bounded_chunks(tok, tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    seconds = 600
    with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as f:
        for k in range(seconds // 30):
            f.write(speechlike(30.0, 16000, seed=k))
    sizes = []
    encode = tok.model.encode
    monkeypatch.setattr(tok.model, "encode", lambda wav, n_q=None: sizes.append(wav.shape[-1]) or encode(wav, n_q))
    codes = tok.encode(path)
    assert tuple(codes.shape) == (8, seconds * 25)
    assert max(sizes) <= (tok.chunk_frames + 2 * 40) * 960  # never the whole file at once
    assert len(tok.decode(codes[:, :100])) == 100 * 960


def test_save_load_roundtrip(tok, tmp_path):
    save_codec(tok.model, tmp_path / "copy")
    again = load_audio_tokenizer(tmp_path / "copy")
    x = speechlike(0.8)
    assert torch.equal(again.encode(x, sr=SR), tok.encode(x, sr=SR))
    assert json.loads((tmp_path / "copy" / "config.json").read_text())["config"]["num_quantizers"] == 8
    save_codec(tok.model, tmp_path / "half", half=True)
    halved = load_audio_tokenizer(tmp_path / "half")
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 0.6 * (tmp_path / "copy" / "model.safetensors").stat().st_size
    assert np.abs(halved.decode(tok.encode(x, sr=SR)) - tok.decode(tok.encode(x, sr=SR))).max() < 1e-2
    with pytest.raises(FileNotFoundError, match="not a codec directory"):
        load_codec(tmp_path)


def test_config_rejects_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown codec config keys: colour"):
        CodecConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="unknown key 'max_steps'"):
        load_codec_config(TINY_CONFIG, ["max_steps=3"])


def test_old_codec_config_format_is_a_migration_error(tmp_path):
    """Configs and overrides of the first codec runs (an `optim` section) say where each key moved."""
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  batch_size: 8\noptim:\n  lr: 1.0e-3\n  checkpoint_every: 250\n  ctc_weight: 2.0\n")
    with pytest.raises(ConfigError, match="instead of `optim`") as error:
        load_codec_config(old)
    for move in ("optim.lr -> train.lr", "optim.checkpoint_every -> train.checkpoint_every_n_steps",
                 "optim.ctc_weight -> task.ctc_weight", "data.batch_size -> train.batch_size"):
        assert move in str(error.value)
    with pytest.raises(ConfigError, match="optim.max_steps -> train.max_steps"):
        load_codec_config(TINY_CONFIG, ["optim.max_steps=3"])
    result = CliRunner().invoke(app, ["speech", "train-codec", "--config", str(old), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 1 and "optim.lr -> train.lr" in result.output and not (tmp_path / "run").exists()


def test_training_runs_resumes_and_exports(tmp_path):
    from cadenza.higgs_audio.codec.train import train

    rows = []
    for k in range(4):
        rel = f"audio/s{k % 2}/{k}.wav"
        (tmp_path / "corpus" / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "corpus" / rel, speechlike(1.0, seed=k), SR)
        rows.append({"id": str(k), "audio": rel, "text": "hi", "speaker": f"s{k % 2}", "duration": 1.0,
                     "sample_rate": SR, "split": "train" if k < 3 else "val"})
    manifest = tmp_path / "corpus" / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [f"data.manifest={manifest}", "train.max_steps=2"]
    run = tmp_path / "run"
    export = train(TINY_CONFIG, overrides, run_dir=run)
    assert export == run / "model" and (run / "checkpoints" / "last.ckpt").exists()
    with pytest.raises(FileExistsError):
        train(TINY_CONFIG, overrides, run_dir=run)
    # A run directory that moved (copied from another machine) still resumes from its newest state every
    # time: last.ckpt is overwritten, never versioned as last-v1.ckpt.
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    for steps in (3, 4):
        export = train(TINY_CONFIG, [*overrides, f"train.max_steps={steps}"], run_dir=moved, resume=True)
        assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == steps
    assert not list((moved / "checkpoints").glob("last-v*.ckpt"))
    tok = load_audio_tokenizer(export)
    assert json.loads((export / "config.json").read_text())["extra"]["step"] == 4
    step2 = tmp_path / "step2"  # any checkpoint of a run exports to the same shipped format
    result = CliRunner().invoke(app, ["speech", "export-codec", str(moved / "checkpoints" / "step0000002.ckpt"), str(step2)])
    assert result.exit_code == 0, result.output
    assert json.loads((step2 / "config.json").read_text())["extra"]["step"] == 2 and load_codec(step2)
    assert tuple(tok.encode(speechlike(0.4), sr=SR).shape) == (8, 10)


@pytest.mark.skipif(not (SHIPPED_DIR / "model.safetensors").exists(), reason="no shipped codec yet")
def test_shipped_codec_loads():
    tok = load_audio_tokenizer()
    assert (tok.sampling_rate, tok.tps, tok.num_codebooks, tok.codebook_size) == (24000, 25, 8, 1024)
    assert tuple(tok.encode(speechlike(0.4), sr=SR).shape) == (8, 10)
    assert (SHIPPED_DIR / "MODEL_CARD.md").exists()
    size = sum(p.stat().st_size for p in SHIPPED_DIR.iterdir())
    assert size < 40 * 2**20


def test_adversarial_finetuning_starts_from_a_codec(tmp_path):
    from cadenza.higgs_audio.codec.train import train

    init = build_tiny_codec(tmp_path / "init")
    sf.write(tmp_path / "a.wav", speechlike(1.0), SR)
    row = {"id": "a", "audio": "a.wav", "text": "hi", "speaker": "s", "duration": 1.0, "sample_rate": SR, "split": "train"}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    export = train(TINY_CONFIG, [f"data.manifest={tmp_path / 'manifest.jsonl'}", "train.max_steps=2",
                                 "task.adv_weight=1.0", f"task.init_from={init}", "task.disc_channels=8"],
                   run_dir=tmp_path / "run")
    meta = json.loads((export / "config.json").read_text())["extra"]
    assert meta["step"] == 2  # one step per batch although two optimizers step
    assert not any(k.startswith("discriminator") for k in load_codec(export).state_dict())


def test_v3_phonetic_codebook_trains_with_ctc_from_a_plain_codec(tmp_path):
    """Codebook 0 of a v3 codec is its own VQ read by a CTC phoneme head; it warm-starts from a v2-style codec
    (its output projection starts at zero, so step 0 decodes as the source with its first 7 codebooks)."""
    from cadenza.higgs_audio.codec.phonemes import PHONEME_CLASSES, phoneme_ids
    from cadenza.higgs_audio.codec.train import CodecModule, train, warm_start

    assert phoneme_ids("ðə kˈæt.") == phoneme_ids("ðəkæt") and len(phoneme_ids("ðə kˈæt.")) == 5
    init = build_tiny_codec(tmp_path / "init")
    v3 = ["model.semantic_codebook=true", "model.semantic_dim=8", f"model.n_phonemes={PHONEME_CLASSES}"]
    cfg = load_codec_config(TINY_CONFIG, v3)
    source, codec = load_codec(init), Codec(CodecConfig.from_dict(cfg["model"])).eval()
    warm_start(codec, source)
    wav = torch.from_numpy(speechlike(0.8))[None]
    codec.train()
    with torch.no_grad():  # k-means init of the new codebook 0
        codec.semantic(codec.encoder(wav))
    codec.eval()
    codes = codec.encode(wav)
    assert codes.shape == (1, 8, 20)
    assert torch.equal(codes[:, 1:], source.encode(wav)[:, :7])
    assert torch.allclose(codec.decode(codes), source.decode(codes[:, 1:]), atol=1e-5)
    assert codec.decode(codes[:, :1]).shape == wav.shape and codec.phoneme_log_probs(wav).shape == (1, 20, PHONEME_CLASSES)

    rows = []
    for k, text in enumerate(["The cat sat.", "A dog ran far.", "Time flies.", "Hello there."]):
        sf.write(tmp_path / f"{k}.wav", speechlike(1.0, seed=k), SR)
        rows.append({"id": str(k), "audio": f"{k}.wav", "text": text, "speaker": "s", "duration": 1.0,
                     "sample_rate": SR, "split": "train" if k < 3 else "val"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    export = train(TINY_CONFIG, [*v3, f"data.manifest={tmp_path / 'manifest.jsonl'}", "train.max_steps=2",
                                 "task.ctc_weight=2.0", f"task.init_from={init}", "data.phoneme_batch_size=2"],
                   run_dir=tmp_path / "run")
    metrics = (next((tmp_path / "run" / "logs").glob("version_*")) / "metrics.csv").read_text()
    assert "train/ctc" in metrics and "val/phoneme_error_rate" in metrics
    tok = load_audio_tokenizer(export)
    assert tok.decode(tok.encode(speechlike(0.4), sr=SR)[:1]).shape[-1] == int(0.4 * SR)
    with pytest.raises(ValueError, match="semantic_codebook"):
        CodecModule(load_codec_config(TINY_CONFIG)["model"], {"ctc_weight": 1.0})
    assert "val/mel_codebook0" in metrics

    # A decoder-only stage keeps the codes (encoder, codebooks) exactly as they were and trains the decoder.
    stage = train(TINY_CONFIG, [*v3, f"data.manifest={tmp_path / 'manifest.jsonl'}", "train.max_steps=2",
                                "task.freeze_codes=true", f"task.init_from={export}", "model.semantic_only_share=0.5"],
                  run_dir=tmp_path / "decoder_stage")
    before, after = load_codec(export).state_dict(), load_codec(stage).state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "semantic.", "quantizer."))]
    assert frozen and [k for k in frozen if not torch.equal(before[k], after[k])] == []
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    # ... so it makes the same codes: an LM trained on them (and a code cache) pairs with either decoder
    assert codec_fingerprint(stage) == codec_fingerprint(export) != codec_fingerprint(init)
    with pytest.raises(ValueError, match="freeze_codes"):
        CodecModule(cfg["model"], {"freeze_codes": True})


def test_semantic_adapter_starts_as_a_no_op_and_keeps_chunked_encoding_exact(tmp_path):
    """A v3 codec that gains an adapter for codebook 0 (`semantic_blocks`) encodes as before at step 0; once it
    has learned something, chunked encoding still matches a whole pass (its reach counts the adapter)."""
    from cadenza.higgs_audio.codec.phonemes import PHONEME_CLASSES
    from cadenza.higgs_audio.codec.train import warm_start

    v3 = ["model.semantic_codebook=true", "model.semantic_dim=8", f"model.n_phonemes={PHONEME_CLASSES}"]
    torch.manual_seed(0)
    plain = Codec(CodecConfig.from_dict(load_codec_config(TINY_CONFIG, v3)["model"]))
    wav = torch.from_numpy(speechlike(4.0))[None]
    plain.train()
    with torch.no_grad():  # k-means init of every codebook
        plain.quantizer.quantize_dropout = False
        plain.quantize(plain.encoder(wav))
    plain.eval()
    adapted = Codec(CodecConfig.from_dict(load_codec_config(TINY_CONFIG, [*v3, "model.semantic_blocks=2"])["model"]))
    warm_start(adapted, plain)
    adapted.eval()
    assert torch.equal(adapted.encode(wav), plain.encode(wav))
    with torch.no_grad():
        for param in adapted.semantic.adapter.parameters():
            param.normal_(0, 0.3)
    whole = adapted.encode(wav)
    assert not torch.equal(whole[:, 0], plain.encode(wav)[:, 0])
    assert (adapted.encode_chunked(wav, chunk_frames=20)[:, 0] == whole[:, 0]).float().mean() > 0.99  # codebook 0
