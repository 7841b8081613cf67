"""Phoneme guidance of codebook 0 (guidance.py) and the transcript pointer's hold on EOS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cadenza.higgs_audio.codec.api import load_audio_tokenizer
from cadenza.higgs_audio.engine import GenerationSettings, HiggsAudioServeEngine
from cadenza.higgs_audio.guidance import PhonemeGuide
from cadenza.higgs_audio.speak import SpeechRequest, first_prompt, voices
from cadenza.higgs_audio.text import TextTokenizer


@pytest.fixture(scope="module")
def codec():
    torch.set_num_threads(1)
    return load_audio_tokenizer()


def test_a_codes_phonemes_are_what_the_codec_hears_in_real_speech(codec):
    """The table read at steady codes agrees with the codec's phoneme head on real speech (a voice the project
    never trains on) far above chance (1 in 51), on the frames where the head hears a phoneme."""
    table = codec.code_phoneme_log_probs
    assert table.shape == (codec.codebook_size, 51)
    torch.testing.assert_close(table.exp().sum(-1), torch.ones(codec.codebook_size))
    codes = codec.encode(str(voices()["slt"]))[0]
    with torch.inference_mode():
        heard = codec.model.semantic.phoneme_log_probs(codec.model.semantic.vq.get_output_from_indices(codes[None]))[0]
    spoken = heard.argmax(-1) != 0  # not the CTC blank
    agree = (heard[:, 1:].argmax(-1) == table[codes].argmax(-1))[spoken].float().mean()
    assert spoken.sum() > 20 and agree > 0.4


def _guide() -> tuple[PhonemeGuide, TextTokenizer]:
    tokenizer = TextTokenizer.build(["ab"])
    table = torch.full((6, 51), -10.0)
    table[:3, 0] = table[3:, 1] = 0.0  # codes 0-2 sound like phoneme "a" (index 0), codes 3-5 like "b"
    return PhonemeGuide(table.log_softmax(-1), tokenizer), tokenizer


def test_guidance_moves_mass_to_codes_of_the_phoneme_and_keeps_eos():
    guide, tokenizer = _guide()
    logits = torch.zeros(3, 8)  # 6 codes, then BOS and EOS
    logits[:, 7] = 1.5
    before = logits.clone()
    a, b = tokenizer.token_id("a"), tokenizer.token_id("b")
    guide.apply(logits, [a, b, a], [4.0, 4.0, 0.0])
    probs = logits.softmax(-1)
    assert probs[0, :3].sum() > 0.9 * probs[0, :6].sum() and probs[1, 3:6].sum() > 0.9 * probs[1, :6].sum()
    torch.testing.assert_close(probs[:, 6:], before.softmax(-1)[:, 6:])  # BOS and EOS keep their probability
    torch.testing.assert_close(logits[2], before[2])  # weight 0: untouched


def test_tokens_without_a_phoneme_are_not_guided():
    guide, tokenizer = _guide()
    logits = torch.randn(2, 8)
    before = logits.clone()
    guide.apply(logits, [tokenizer.token_id(" "), -1], [4.0, 4.0])
    torch.testing.assert_close(logits, before)


@pytest.fixture(scope="module")
def pointer_engine(tmp_path_factory, build_tiny_speech_model) -> HiggsAudioServeEngine:
    return HiggsAudioServeEngine(build_tiny_speech_model(tmp_path_factory.mktemp("pointer"), transcript_pointer=True))


def _always(engine, monkeypatch, step: int, eos_first: bool) -> None:
    """Pointer head that always moves `step` tokens; audio head that puts codebook 0 on EOS when eos_first."""
    pointer = torch.full((1, engine.decoder.pointer_head.shape[0]), -1e4)
    pointer[0, step] = 0.0
    monkeypatch.setattr(engine.decoder, "pointer_logits", lambda h: pointer.expand(len(h), -1))
    audio_logits = engine.decoder.audio_logits

    def logits(hidden):
        out = audio_logits(hidden)
        if eos_first:
            out[:, 0, engine.config.audio_stream_eos_id] = 1e4
        return out

    monkeypatch.setattr(engine.decoder, "audio_logits", logits)


def _say(engine, text: str, steps: int, guidance: float = 4.0):
    prompt = first_prompt(engine, SpeechRequest(text, {}))
    settings = GenerationSettings(max_new_tokens=steps, seed=0, phoneme_guidance=guidance)
    return engine.generate_prompts([prompt], [settings], decode_audio=False)[0], engine._reading(prompt.input_ids)


def test_no_eos_before_the_pointer_reaches_the_last_token(pointer_engine, monkeypatch):
    from cadenza.higgs_audio.engine import MAX_FRAMES_PER_TOKEN

    _always(pointer_engine, monkeypatch, step=0, eos_first=True)  # a pointer that never moves
    response, reading = _say(pointer_engine, "How are you today?", 300)
    # it ends once it has spoken MAX_FRAMES_PER_TOKEN frames a token, not at max_new_tokens
    assert response.usage["finish_reason"] == "stop"
    assert response.generated_audio_tokens.shape[1] == MAX_FRAMES_PER_TOKEN * len(reading) - 1
    monkeypatch.undo()
    _always(pointer_engine, monkeypatch, step=1, eos_first=True)  # one token a frame: ends once it is read
    response, reading = _say(pointer_engine, "How are you today?", 200)
    assert response.usage["finish_reason"] == "stop"
    # column c (after the BOS column 0) speaks token c: EOS comes in the column on the last token, after the
    # frames of columns 1 .. len(reading) - 2
    assert response.generated_audio_tokens.shape[1] == len(reading) - 2


def test_guided_codes_sound_like_the_token_the_pointer_is_on(pointer_engine, monkeypatch):
    """With the pointer walking a token a frame, guidance makes codebook 0 carry the transcript's phonemes,
    as the codec's table reads them; unguided, the (untrained) model's codes do not."""
    _always(pointer_engine, monkeypatch, step=1, eos_first=False)
    guide = pointer_engine.phoneme_guide
    table = pointer_engine.audio_tokenizer.code_phoneme_log_probs

    def hits(guidance: float) -> float:
        response, reading = _say(pointer_engine, "Free markets select for winning solutions.", 60, guidance)
        codes = response.generated_audio_tokens[0]  # frame f is column f + 1, which speaks token f + 1
        wanted = guide.token_phoneme[np.asarray(reading[1:])][:len(codes)]
        codes = codes[:len(wanted)]
        said = table[torch.as_tensor(codes)].argmax(-1).numpy()
        return float(np.mean(said[wanted >= 0] == wanted[wanted >= 0]))

    assert hits(0.0) < 0.35 < 0.8 < hits(8.0)


def test_the_shipped_preview_loads_with_its_choices():
    """The shipped speech model (a preview, see its MODEL_CARD.md) is what the engine loads by default: a
    transcript-pointer model, guided by the shipped codec's phoneme head, decoding its first codebook."""
    engine = HiggsAudioServeEngine()
    assert engine.config.transcript_pointer and engine.phoneme_guide is not None
    assert engine.decode_codebooks == engine.config.decode_codebooks == 1
