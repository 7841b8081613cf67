"""Speech LM data and training: code cache, conversations, placeholder expansion and shifted labels,
a tiny training run that resumes and exports a model the engine loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from cadenza.higgs_audio.chatml import AudioContent, ChatMLSample, Message
from cadenza.higgs_audio.collator import HiggsAudioSampleCollator
from cadenza.higgs_audio.configuration import IGNORE_INDEX as IGNORE, HiggsAudioConfig
from cadenza.higgs_audio.corpus_voices import VoiceIdentity, engine_available, synthesize
from cadenza.higgs_audio.dataset import SampleMix, SpeechLMDataset, encode_corpus
from cadenza.higgs_audio.delay import build_delay_pattern
from cadenza.higgs_audio.inputs import expand_sample, pad_inputs, transcript_pointer
from cadenza.higgs_audio.manifest import read_manifest
from cadenza.higgs_audio.prompt import ChatMLDatasetSample, tokenize_sample
from cadenza.higgs_audio.text import TextTokenizer
from cadenza.higgs_audio.train import token_ids

SENTENCES = ["The cat sat on the mat.", "Time flies like an arrow.", "A stitch in time saves nine.",
             "Fortune favors the bold.", "Patience is a virtue.", "Knowledge is power."]
# two training speakers, one heard only in validation
SPEAKERS = {"spk-a": ("en-us", "m3", "train"), "spk-b": ("en-gb", "f2", "train"), "spk-c": ("en-us", "f4", "val")}



@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """18 espeak utterances of 3 speakers, encoded with the shipped codec."""
    if not engine_available("espeak"):
        pytest.skip("needs espeak-ng")
    root = tmp_path_factory.mktemp("speech_lm")
    rows = []
    for speaker, (voice, variant, split) in SPEAKERS.items():
        (root / "audio" / speaker).mkdir(parents=True)
        for n, text in enumerate(SENTENCES):
            audio = f"audio/{speaker}/{n}.wav"
            wav = synthesize(VoiceIdentity("espeak", voice, variant), text)
            sf.write(root / audio, wav, 24000)
            row_split = split if split == "val" else ("train" if n < 4 else "val")
            rows.append({"id": f"{speaker}_{n}", "audio": audio, "text": text, "speaker": speaker,
                         "duration": len(wav) / 24000, "sample_rate": 24000, "split": row_split})
    (root / "audio" / "broken.wav").write_text("not audio")
    rows.append({"id": "broken", "audio": "audio/broken.wav", "text": "Broken.", "speaker": "spk-a",
                 "duration": 1.0, "sample_rate": 24000, "split": "train"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    encode_corpus(root, progress=False)
    return root


@pytest.fixture(scope="module")
def tokenizer(corpus) -> TextTokenizer:
    return TextTokenizer.build([r["text"] for r in read_manifest(corpus)])


@pytest.fixture(scope="module")
def config(tokenizer) -> HiggsAudioConfig:
    return HiggsAudioConfig.tiny(text_vocab_size=tokenizer.vocab_size, **token_ids(tokenizer))


def test_code_cache_skips_and_reports_a_broken_file(corpus):
    cache = next((corpus / "codes").iterdir())
    assert len(list(cache.glob("spk-*.npy"))) == 18
    failures = [json.loads(line) for line in (cache / "failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == ["broken"] and "broken.wav" in failures[0]["audio"]
    codes = np.load(cache / "spk-a_0.npy")
    assert codes.shape[0] == 8 and codes.dtype == np.int16 and 0 <= codes.min() and codes.max() < 1024


def test_missing_corpus_and_cache_are_clear_errors(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="not a speech corpus"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="encode-corpus"):
        SpeechLMDataset(tmp_path, tokenizer)


def test_expand_sample_shifts_labels_onto_the_delayed_frames(config, tokenizer):
    codes = np.arange(8 * 3).reshape(8, 3) % 1024
    ref = np.full((8, 2), 7)
    sample = ChatMLSample([Message("user", "Hi."), Message("assistant", AudioContent(audio_url="ref")),
                           Message("user", "Go."), Message("assistant", AudioContent(audio_url="target"))], start_index=3)
    e = expand_sample(tokenize_sample(sample, tokenizer, [ref, codes]), config)
    delayed = build_delay_pattern(torch.as_tensor(codes), config.audio_stream_bos_id, config.audio_stream_eos_id).numpy()
    width = delayed.shape[1]  # T + n_q + 1
    spans = np.flatnonzero(np.diff(np.r_[0, e.audio_mask.astype(int), 0]))
    (ref_start, ref_end), (start, end) = spans.reshape(-1, 2)
    assert ref_end - ref_start == 2 + 9 and end - start == width
    assert np.array_equal(e.audio_codes[:, start:end], delayed)
    # the reference (an unlabelled turn) teaches nothing; the target's next frames do, BOS fill excluded
    assert (e.audio_labels[:, ref_start - 1 : ref_end] == IGNORE).all()
    expected = np.where(delayed[:, 1:] == config.audio_stream_bos_id, IGNORE, delayed[:, 1:])
    assert np.array_equal(e.audio_labels[:, start : end - 1], expected)
    assert (e.audio_labels[:, end - 1] == IGNORE).all()
    # after the all-EOS frame comes <|audio_eos|> then <|eot_id|>, both learned by the text head
    assert e.text_labels[end - 1] == config.audio_eos_token_id and e.text_labels[end] == config.eot_token_id
    assert e.input_ids[start - 1] == config.audio_out_bos_token_id
    assert e.text_labels[start - 2] == config.audio_out_bos_token_id  # the model learns to open audio
    assert (e.text_labels[start - 1 : end - 1] == IGNORE).all()


def test_alignment_labels_place_the_transcript_and_its_audio(config, tokenizer):
    codes = np.zeros((8, 6), int)
    sample = ChatMLSample([Message("user", "Hi."), Message("assistant", AudioContent(audio_url="ref")),
                           Message("user", "Go home."), Message("assistant", AudioContent(audio_url="target"))], start_index=3)
    item = tokenize_sample(sample, tokenizer, [np.zeros((8, 2), int), codes])
    start, end = item.transcript_span
    assert tokenizer.decode(item.input_ids[start:end]) == tokenizer.decode(tokenizer.encode("Go home.", spoken=True))
    e = expand_sample(item, config)
    text_frame, audio_frame = e.alignment_labels
    target = np.flatnonzero(e.audio_mask)[-(6 + 8 + 1):]  # the last placeholder's delayed frames
    assert np.array_equal(np.flatnonzero(audio_frame >= 0), target)
    assert np.array_equal(audio_frame[target], np.arange(len(target)))  # the frame each position predicts
    # without measured frames the tokens are spread over the 6 frames by rough duration: silent marks take
    # none (-1), the final "." two
    durations = tokenizer.durations(item.input_ids[start:end])
    start, end = start + 10, end + 10  # expanded positions: the reference's placeholder became 2 + 8 + 1 columns
    spoken = text_frame[start:end]
    assert np.array_equal(spoken < 0, np.asarray(durations) == 0) and 0.0 in durations
    assert 0 < spoken[spoken >= 0].min() and (np.diff(spoken[spoken >= 0]) > 0).all()
    assert spoken[-1] == pytest.approx(6 * (1 - 1 / sum(durations)), abs=0.01)
    assert (text_frame[:start] == -1).all() and (text_frame[end:target.min()] == -1).all()
    # measured frames (aligner.align_corpus) are used as given; ones of another transcript are not
    measured = [float(k) if d else -1.0 for k, d in enumerate(durations)]
    assert tokenize_sample(sample, tokenizer, [np.zeros((8, 2), int), codes], measured).transcript_frames == measured
    assert tokenize_sample(sample, tokenizer, [np.zeros((8, 2), int), codes], measured[:-1]).transcript_frames == item.transcript_frames
    # the labels survive a cut from the left (the collator keeps a long sample's end)
    kept = e.positions(slice(3, None))
    assert np.array_equal(kept.alignment_labels, e.alignment_labels[:, 3:])
    batch = HiggsAudioSampleCollator(config)([item])
    assert torch.equal(batch["alignment_labels"][0, :, : len(e)], torch.from_numpy(e.alignment_labels))
    # nothing to align when no audio is trained
    prompt = tokenize_sample(ChatMLSample([Message("user", "Go home.")]), tokenizer, [])
    assert prompt.transcript_span is None and (expand_sample(prompt, config).alignment_labels == -1).all()


def test_transcript_pointer_follows_where_each_token_is_spoken(config, tokenizer):
    # token middles 1, 3, 3.6, 7: a frame belongs to the nearest middle
    pointer, steps = transcript_pointer(np.array([1.0, 3.0, 3.6, 7.0]), 9, max_step=3)
    assert pointer.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert steps.tolist() == [0, 1, 0, 1, 0, 1, 0, 0, IGNORE]
    _, steps = transcript_pointer(np.array([1.0, 1.2, 1.4, 5.0]), 5, max_step=1)  # two tokens in one frame
    assert steps.tolist() == [0, 1, 0, 1, IGNORE]  # the step is capped
    sample = ChatMLSample([Message("user", "Go home."), Message("assistant", AudioContent(audio_url="target"))])
    item = tokenize_sample(sample, tokenizer, [np.zeros((8, 12), int)])
    e = expand_sample(item, config)
    transcript = np.asarray(item.input_ids[slice(*item.transcript_span)])
    sounding = transcript[np.asarray(item.transcript_frames) >= 0]
    target = np.flatnonzero(e.audio_mask)
    assert np.array_equal(np.flatnonzero(e.spoken_ids >= 0), target)
    said = e.spoken_ids[target]  # every sounding token in order, each for some frames, the last one to the end
    assert said[0] == sounding[0] and said[-1] == sounding[-1]
    assert [t for k, t in enumerate(said) if k == 0 or t != said[k - 1]] == sounding.tolist()
    assert np.array_equal(np.flatnonzero(e.pointer_labels != IGNORE), target[:-1])
    assert set(e.pointer_labels[target[:-1]]) <= set(range(config.pointer_max_step + 1))
    batch = HiggsAudioSampleCollator(config)([item])
    assert torch.equal(batch["spoken_ids"][0, : len(e)], torch.from_numpy(e.spoken_ids))
    assert torch.equal(batch["pointer_labels"][0, : len(e)], torch.from_numpy(e.pointer_labels))


def test_collator_pads_right_for_training_and_left_for_prompts(config, tokenizer):
    short = tokenize_sample(ChatMLSample([Message("user", "Hi."), Message("assistant", AudioContent(audio_url="a"))]),
                            tokenizer, [np.zeros((8, 2), int)])
    long = tokenize_sample(ChatMLSample([Message("user", "A longer sentence."),
                                         Message("assistant", AudioContent(audio_url="a"))]), tokenizer, [np.zeros((8, 5), int)])
    batch = HiggsAudioSampleCollator(config)([short, long])
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["audio_codes"].shape[1] == 8
    assert batch["attention_mask"][0, 0] == 1 and batch["attention_mask"][0, -1] == 0
    left = pad_inputs([expand_sample(s, config) for s in (short, long)], config, pad_left=True, round_to=1)
    assert left["attention_mask"][0, -1] == 1 and left["attention_mask"][0, 0] == 0
    assert (left["text_labels"][left["attention_mask"] == 0] == IGNORE).all()
    with pytest.raises(ValueError, match="placeholders"):
        expand_sample(ChatMLDatasetSample(short.input_ids, short.label_ids, []), config)


def test_dataset_draws_every_kind_and_labels_only_the_target(corpus, tokenizer, config):
    mix = SampleMix(clone=0.4, plain=0.3, dialogue=0.3)
    data = SpeechLMDataset(corpus, tokenizer, "train", mix=mix, seed=1)
    assert len(data) == 8 and all(r["speaker"] != "spk-c" for r in data.rows)
    audio_bos, audio_out_bos = tokenizer.token_id("<|audio_bos|>"), tokenizer.token_id("<|audio_out_bos|>")
    speaker1 = tokenizer.token_id("[SPEAKER1]")
    kinds = set()
    for epoch in range(4):
        data.set_epoch(epoch)
        for i in range(len(data)):
            item = data[i]
            e = expand_sample(item, config)
            labelled_audio = (e.audio_labels != IGNORE).any(axis=0)
            assert labelled_audio.any()
            last_out = max(k for k, t in enumerate(item.input_ids) if t == audio_out_bos)
            assert not labelled_audio[: last_out].any()  # only the final assistant audio is learned
            kinds.add("dialogue" if speaker1 in item.input_ids else
                      "system_reference" if audio_bos in item.input_ids else
                      "pair" if item.input_ids.count(audio_out_bos) == 2 else "plain")
    assert kinds == {"dialogue", "system_reference", "pair", "plain"}
    data.set_epoch(0)
    again = SpeechLMDataset(corpus, tokenizer, "train", mix=mix, seed=1)
    assert again[3].input_ids == data[3].input_ids


def test_tiny_training_resumes_and_exports_a_loadable_model(corpus, tmp_path):
    from cadenza.higgs_audio.engine import HiggsAudioServeEngine
    from cadenza.higgs_audio.train import train

    run_dir = tmp_path / "run"
    overrides = [f"data.corpus={corpus}", f"train.run_dir={run_dir}", "train.max_steps=4",
                 "train.checkpoint_every_n_steps=2", "train.val_every_n_steps=4", "train.batch_size=2",
                 "train.warmup_steps=1", "train.log_every_n_steps=1", "train.limit_val_batches=1"]
    export = train(Path(__file__).parents[1] / "configs" / "speech_tiny.yaml", overrides)
    assert (run_dir / "tokenizer.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    train(Path(__file__).parents[1] / "configs" / "speech_tiny.yaml", [*overrides[:2], "train.max_steps=6", *overrides[3:]],
          resume=True)
    assert first == 4 and torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    metrics = (run_dir / "logs").rglob("metrics.csv")
    assert any("val/audio_loss" in p.read_text() and "val/audio_loss_cb7" in p.read_text() for p in metrics)
    engine = HiggsAudioServeEngine(export)
    response = engine.generate(ChatMLSample([Message("user", "Hello there.")]), max_new_tokens=12, seed=0)
    assert response.generated_audio_tokens.shape[0] == 8
    # warm start from the export into a model with a transcript pointer: its new head starts fresh
    pointer_run = tmp_path / "pointer"
    pointer_export = train(Path(__file__).parents[1] / "configs" / "speech_tiny.yaml",
                           [overrides[0], f"train.run_dir={pointer_run}", "train.max_steps=2", *overrides[3:],
                            f"model.init_from={export}", "model.overrides.transcript_pointer=true"])
    assert any("train/pointer_loss" in p.read_text() for p in (pointer_run / "logs").rglob("metrics.csv"))
    assert HiggsAudioServeEngine(pointer_export).decoder.pointer_head is not None
    # an export that decodes fewer codebooks keeps the choice in its config
    from cadenza.higgs_audio.train import export as export_checkpoint

    two = export_checkpoint(run_dir / "checkpoints" / "last.ckpt", tmp_path / "two", decode_codebooks=2)
    assert HiggsAudioServeEngine(two).decode_codebooks == 2 and engine.decode_codebooks == 8
    with pytest.raises(ValueError, match="decode_codebooks 0"):
        export_checkpoint(run_dir / "checkpoints" / "last.ckpt", tmp_path / "zero", decode_codebooks=0)
    # a model refuses an audio tokenizer whose codes it never learned
    config_file = export / "config.json"
    config_file.write_text(config_file.read_text().replace(engine.config.audio_tokenizer_fingerprint, "0123456789ab"))
    with pytest.raises(ValueError, match="0123456789ab"):
        HiggsAudioServeEngine(export)


def test_finetuning_keeps_the_models_tokenizer(tmp_path, corpus, tokenizer):
    from cadenza.higgs_audio.train import load_or_build_tokenizer

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    TextTokenizer([*tokenizer.vocab, "\u0361"]).save(model_dir / "tokenizer.json")
    run_tokenizer = load_or_build_tokenizer(tmp_path / "run", corpus, init_from=model_dir)
    assert run_tokenizer.vocab == (*tokenizer.vocab, "\u0361")
    assert load_or_build_tokenizer(tmp_path / "run", corpus).vocab == run_tokenizer.vocab  # kept in the run


def test_finetune_freezes_everything_but_the_audio_adapter(config):
    from cadenza.higgs_audio.modeling import HiggsAudioModel
    from cadenza.higgs_audio.train import freeze

    model = HiggsAudioModel(config)
    freeze(model, freeze_llm=True, freeze_text_head=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("audio" in n) for n in trainable)
    assert not any(n.startswith("embed_tokens") or "self_attn" in n or "text_lm_head" in n for n in trainable)


@pytest.mark.slow
def test_eval_codec_cli_measures_held_out_clips(corpus, tmp_path):
    from typer.testing import CliRunner

    from cadenza.cli import app

    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["speech", "eval-codec", "--manifest", str(corpus / "manifest.jsonl"),
                                      "--split", "val", "--per-group", "1", "--festival", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {c["group"] for c in report["clips"]} == {"seen_speaker", "unseen_speaker"}
    assert all(0.0 <= c["similarity"] <= 1.0 for c in report["clips"])


def test_length_grouped_epochs_cut_padding_and_keep_every_item(corpus, tokenizer):
    from cadenza.higgs_audio.prompt import expanded_length

    data = SpeechLMDataset(corpus, tokenizer, "train", seed=3, group_by_length=2)
    data.set_epoch(1)
    assert sorted(data.order) == list(range(len(data)))
    items = [data[i] for i in range(len(data))]
    assert [expanded_length(s) for s in items] == [expanded_length(data.item(i)) for i in data.order]
    assert expanded_length(items[0]) == len(expand_sample(items[0], HiggsAudioConfig.tiny(**token_ids(tokenizer))))
    padded = sum(max(expanded_length(s) for s in items[k : k + 2]) * 2 for k in range(0, len(items), 2))
    plain = SpeechLMDataset(corpus, tokenizer, "train", seed=3)
    plain.set_epoch(1)
    unsorted = [plain[i] for i in range(len(plain))]
    padded_plain = sum(max(expanded_length(s) for s in unsorted[k : k + 2]) * 2 for k in range(0, len(unsorted), 2))
    assert padded <= padded_plain
    first_order = list(data.order)
    data.set_epoch(2)
    assert data.order != first_order


def test_forced_align_finds_where_each_token_starts():
    from cadenza.higgs_audio.aligner import forced_align

    path = [0, 5, 5, 0, 6, 0, 6, 6, 0, 0]  # blank = 0; the repeated 6 needs the blank between
    log_probs = np.log(np.full((len(path), 8), 0.02))
    log_probs[np.arange(len(path)), path] = np.log(0.86)
    assert forced_align(log_probs, [5, 6, 6]).tolist() == [1, 4, 6]
    long = [5, 6, 7] * 50  # more states than an int8 counts
    log_probs = np.log(np.full((2 * len(long), 8), 0.02))
    log_probs[np.arange(0, 2 * len(long), 2), long] = np.log(0.86)
    log_probs[np.arange(1, 2 * len(long), 2), 0] = np.log(0.86)
    assert forced_align(log_probs, long).tolist() == list(range(0, 2 * len(long), 2))
    with pytest.raises(ValueError, match="3 tokens do not fit in 3"):
        forced_align(log_probs[:3], [5, 6, 6])  # 5, 6, blank, 6: four steps at least


def test_align_corpus_cli_writes_token_frames_the_dataset_uses(corpus, tokenizer, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from cadenza.cli import app

    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    tokenizer.save(tmp_path / "tokenizer.json")
    result = CliRunner().invoke(app, ["speech", "align-corpus", str(copy), "--text-tokenizer",
                                      str(tmp_path / "tokenizer.json")])
    assert result.exit_code == 0, result.output
    cache = next((copy / "codes").iterdir())
    assert not (cache / "aligner.pt").exists()  # the shipped v3 codec aligns with its own phoneme head
    frames = {row["id"]: row["frames"] for row in map(json.loads, (cache / "frames.jsonl").read_text().splitlines())}
    assert len(frames) == 18  # every encoded utterance (the broken file has no codes)
    for row in read_manifest(copy):
        if row["id"] in frames:
            ids = tokenizer.encode(row["text"], spoken=True)
            spoken = np.asarray(frames[row["id"]])
            assert len(spoken) == len(ids)
            assert np.array_equal(spoken < 0, np.asarray(tokenizer.durations(ids)) == 0)
            n_frames = np.load(cache / f"{row['id']}.npy").shape[1]
            assert (np.diff(spoken[spoken >= 0]) > 0).all() and spoken.max() <= n_frames
    # a second run keeps what is aligned and only adds new utterances
    lines = (cache / "frames.jsonl").read_text().splitlines()
    (cache / "frames.jsonl").write_text("\n".join(lines[1:]) + "\n")
    result = CliRunner().invoke(app, ["speech", "align-corpus", str(copy), "--text-tokenizer", str(tmp_path / "tokenizer.json")])
    assert result.exit_code == 0, result.output
    assert sorted((cache / "frames.jsonl").read_text().splitlines()) == sorted(lines)
    data = SpeechLMDataset(copy, tokenizer, "train", seed=1)
    for index, row in enumerate(data.rows):
        item = data.item(index)
        if len(item.audio_codes) < 3:  # a clone or plain conversation: its target's measured frames
            assert item.transcript_frames == frames[row["id"]]


def test_codes_of_a_codec_without_a_phoneme_head_get_a_trained_aligner(corpus, tokenizer, tmp_path):
    import shutil

    from cadenza.higgs_audio.aligner import align_corpus
    from cadenza.higgs_audio.codec.api import SHIPPED_DIR

    v2 = SHIPPED_DIR.parent / "codec_v2"
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    cache = encode_corpus(copy, v2, progress=False)
    frames = align_corpus(copy, tokenizer, v2, epochs=1)
    assert (cache / "aligner.pt").exists() and len(frames.read_text().splitlines()) == 18


def test_a_v3_codec_aligns_with_its_own_phoneme_head(tokenizer):
    """A v3 codec's codebook-0 phoneme head scores the LM's text tokens: a phoneme symbol its class, a pause
    the blank, any other token a uniform score; each frame twice, like the trained aligner."""
    import torch

    from cadenza.higgs_audio.recognizer import UPSAMPLE, PhonemeHeadAligner
    from cadenza.higgs_audio.codec.config import CodecConfig
    from cadenza.higgs_audio.codec.model import Codec
    from cadenza.higgs_audio.codec.phonemes import BLANK, PHONEME_CLASSES, phoneme_ids
    from cadenza.higgs_audio.codec.train import load_codec_config

    tiny = Path(__file__).resolve().parents[1] / "configs" / "codec_tiny.yaml"
    cfg = load_codec_config(tiny, ["model.semantic_codebook=true", "model.semantic_dim=8",
                                   f"model.n_phonemes={PHONEME_CLASSES}"])["model"]
    codec = Codec(CodecConfig.from_dict(cfg)).eval()
    aligner = PhonemeHeadAligner(codec, tokenizer)
    codes = torch.randint(0, 1024, (1, 8, 5))
    with torch.no_grad():
        scores = aligner(codes, torch.tensor([5]))
        heads = codec.semantic.phoneme_log_probs(codec.semantic.vq.get_output_from_indices(codes[:, 0]))
    assert scores.shape == (1, UPSAMPLE * 5, tokenizer.vocab_size)
    for token, column in (("ə", phoneme_ids("ə")[0]), (".", BLANK)):
        torch.testing.assert_close(scores[0, ::UPSAMPLE, tokenizer.token_id(token)], heads[0, :, column])
    assert torch.allclose(scores[0, :, tokenizer.token_id("<|eot_id|>")], torch.tensor(-np.log(PHONEME_CLASSES)).float())
