"""Best of several takes (takes.py): the scorer reads real speech as its own transcript, and the engine keeps the
take it scores best, each take being exactly what its seed gives alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cadenza.higgs_audio.codec.api import load_audio_tokenizer
from cadenza.higgs_audio.engine import GenerationSettings, HiggsAudioServeEngine
from cadenza.higgs_audio.speak import SpeechRequest, first_prompt, speak_stream, voice_reference, voices
from cadenza.higgs_audio.takes import TAKE_SEED_STRIDE, TakeScorer
from cadenza.higgs_audio.text import TextTokenizer, sounding


def _reading(tokenizer: TextTokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text, spoken=True)
    return [ids[i] for i in sounding(tokenizer, ids)]


def test_the_scorer_reads_real_speech_as_its_own_transcript():
    """A shipped voice's clip is read more easily as its own transcript than as another sentence, and better
    than the same codes played backwards."""
    torch.set_num_threads(1)
    clip = voices()["slt"]
    own, other = clip.with_suffix(".txt").read_text().strip(), "The coffee is ready and the sun is out today."
    tokenizer = TextTokenizer.build([own, other])
    scorer = TakeScorer(load_audio_tokenizer().model, tokenizer)
    codes = load_audio_tokenizer().encode(str(clip)).numpy()
    right = scorer(codes, _reading(tokenizer, own))
    assert right < scorer(codes, _reading(tokenizer, other))
    assert right < scorer(codes[:, ::-1].copy(), _reading(tokenizer, own))
    assert scorer(codes[:, :0], _reading(tokenizer, own)) == float("inf")


@pytest.fixture(scope="module")
def pointer_engine(tmp_path_factory, build_tiny_speech_model) -> HiggsAudioServeEngine:
    torch.set_num_threads(1)
    return HiggsAudioServeEngine(build_tiny_speech_model(tmp_path_factory.mktemp("takes"), transcript_pointer=True))


def _prompt(engine, text: str = "How are you today, my friend?"):
    return first_prompt(engine, SpeechRequest(text, {0: voice_reference(engine, "joe")}))


def test_best_of_keeps_the_best_scored_take_of_those_its_seeds_give_alone(pointer_engine, monkeypatch):
    engine, prompt = pointer_engine, _prompt(pointer_engine)
    seeds = [7 + k * TAKE_SEED_STRIDE for k in range(3)]
    alone = [engine.generate_prompts([prompt], GenerationSettings(max_new_tokens=40, seed=s), decode_audio=False)[0]
             for s in seeds]
    # a scorer that likes the take whose codes sum to the least
    scored = []
    monkeypatch.setattr(engine, "take_scorer", lambda codes, reading: scored.append(reading) or float(codes.sum()))
    other = _prompt(engine, "Hello there.")
    best, single = engine.generate_prompts([prompt, other], [GenerationSettings(max_new_tokens=40, seed=7, best_of=3),
                                                             GenerationSettings(max_new_tokens=40, seed=7)])
    expected = min(alone, key=lambda r: r.generated_audio_tokens.sum())
    np.testing.assert_array_equal(best.generated_audio_tokens, expected.generated_audio_tokens)
    assert best.audio is not None and len(best.audio) == expected.generated_audio_tokens.shape[1] * 960
    assert len(scored) == 3 and scored[0] == engine._reading(prompt.input_ids)  # the request of best_of 1 is not scored
    assert single.generated_audio_tokens.shape[1] > 0


def test_best_of_that_cannot_be_chosen_is_refused(pointer_engine, tiny_speech_model):
    prompt = _prompt(pointer_engine)
    with pytest.raises(ValueError, match="best_of must be at least 1"):
        pointer_engine.generate_prompts([prompt], GenerationSettings(max_new_tokens=10, best_of=0))
    with pytest.raises(ValueError, match="a stream says one take"):
        next(speak_stream(pointer_engine, SpeechRequest("Hello there.", settings=GenerationSettings(best_of=2))))
    plain = HiggsAudioServeEngine(tiny_speech_model)  # no transcript pointer: nothing tells takes apart
    with pytest.raises(ValueError, match="transcript pointer"):
        plain.generate_prompts([_prompt(plain)], GenerationSettings(max_new_tokens=10, best_of=2))
