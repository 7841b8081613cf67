"""Evaluation helpers: word normalisation, edit distance, aggregation, manifest clips, DNSMOS."""

import json

import numpy as np

from cadenza.higgs_audio.codec.codec_eval import ClipResult, aggregate, manifest_clips
from cadenza.higgs_audio.speech_metrics import edit_distance, normalize_words


def test_normalize_words_spells_digits_like_the_corpus():
    assert normalize_words("The 10 monks, in 1984 -- well-known!") == ["the", "ten", "monks", "in", "nineteen", "eighty", "four", "well", "known"]


def test_edit_distance():
    assert edit_distance("a b c".split(), "a x c d".split()) == 2
    assert edit_distance([], "a b".split()) == 2


def test_aggregate_is_corpus_level():
    rows = [ClipResult("a", "g", "s", 10, 1, 3, 0.9, 3.0, 0.9, 0.2), ClipResult("b", "g", "s", 30, 0, 1, 0.8, float("nan"), 0.8, 0.4)]
    agg = aggregate(rows)
    assert agg["wer_original"] == 2.5 and agg["wer_resynth"] == 10.0 and agg["wer_delta"] == 7.5
    assert agg["pesq"] == 3.0 and agg["similarity"] == 0.85


def test_manifest_clips_separate_seen_and_unseen_speakers(tmp_path):
    rows = [{"id": f"{s}{k}", "audio": f"audio/{s}/{k}.wav", "text": "hello there friend.", "speaker": s, "split": split}
            for s, split in [("a", "train"), ("a", "test"), ("b", "test")] for k in range(3)]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    clips = manifest_clips(tmp_path / "manifest.jsonl", "test", per_group=8)
    assert {c.group for c in clips if c.speaker == "a"} == {"seen_speaker"}
    assert {c.group for c in clips if c.speaker == "b"} == {"unseen_speaker"}
    assert all(str(tmp_path) in c.audio for c in clips)


def test_festival_clips_are_kept_per_sentence(tmp_path):
    """A clip made for one sentence is never handed out for another (the sentence lists change with the corpus)."""
    import shutil

    import pytest
    import soundfile as sf

    from cadenza.higgs_audio.speech_metrics import festival_clips

    if shutil.which("text2wave") is None:
        pytest.skip("needs Festival (text2wave)")
    first = festival_clips(["Good morning.", "See you soon."], tmp_path, 2, voices=("kal_diphone",))
    second = festival_clips(["A completely different and much longer sentence."], tmp_path, 1, voices=("kal_diphone",))
    assert [c.text for c in first] == ["Good morning.", "See you soon."]
    assert second[0].text.startswith("A completely") and second[0].audio not in {c.audio for c in first}
    assert sf.info(second[0].audio).duration > sf.info(first[0].audio).duration


def test_dnsmos_rates_speech_above_noise():  # the real DNSMOS models, shipped inside the speechmos package
    from cadenza.core.audio import read_audio, resample
    from cadenza.higgs_audio.engine import SHIPPED_MODEL
    from cadenza.higgs_audio.speech_metrics import dnsmos

    speech, sr = read_audio(SHIPPED_MODEL.parent / "voices" / "joe.wav")
    speech = resample(speech, sr, 16000)
    noise = np.random.default_rng(0).normal(0, 0.1, len(speech)).astype(np.float32)
    assert 1.0 <= dnsmos(noise) < 2.0 < dnsmos(speech) <= 5.0
