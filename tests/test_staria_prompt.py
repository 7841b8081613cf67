"""The prompt format: generation builds the prompt training learns from, and never imports training."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from cadenza.staria.cache import TokenCache
from cadenza.staria.generate import StariaGenerator
from cadenza.staria.models import PRESETS, StariaSeq2Seq
from cadenza.staria.prompt import UNCONDITIONAL_LEN, snippet_prompt, unconditional_prompt

INFERENCE = ("cadenza.staria.generate", "cadenza.staria.labeller", "cadenza.staria.piece_eval",
             "cadenza.staria.classifier_eval", "cadenza.staria.prompt_following")
TRAINING = ("lightning", "cadenza.staria.train", "cadenza.staria.tasks", "cadenza.staria.datamodule",
            "cadenza.staria.wake_sleep", "cadenza.core.training")


def test_generation_and_evaluation_never_import_training():
    code = (f"import sys\nfor m in {INFERENCE!r}: __import__(m)\n"
            f"print(sorted(m for m in {TRAINING!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.fixture(scope="module")
def generator() -> StariaGenerator:
    torch.manual_seed(0)
    return StariaGenerator(StariaSeq2Seq(PRESETS["tiny"]))


def test_generator_prompt_from_a_marked_midi_is_the_training_prompt(generator, synthetic_corpus):
    tok, cache = generator.tok, TokenCache(synthetic_corpus)
    for i in cache.indices("train")[::3]:
        ids, form = np.asarray(cache.ids(i), dtype=np.int64), cache.rows[i]["form"]
        score = tok.detokenize(ids)  # the piece as a prompt MIDI: its sections are markers
        for snippet_len in (32, 256):
            training = snippet_prompt(tok, ids, snippet_len, form)
            generation = generator.prompt(form, generator.snippets(form, score, seed=0), snippet_len)
            assert np.array_equal(training, generation), (cache.rows[i]["id"], snippet_len)


def test_unconditional_prompt_is_the_prompts_first_tokens(generator, synthetic_corpus):
    tok, cache = generator.tok, TokenCache(synthetic_corpus)
    ids, form = cache.ids(0), cache.rows[0]["form"]
    assert np.array_equal(unconditional_prompt(tok, form), snippet_prompt(tok, ids, form=form)[:UNCONDITIONAL_LEN])
