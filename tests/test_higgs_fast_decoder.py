"""HiggsAudioDecoder against HiggsAudioModel.forward on tiny models: left-padded batches, text / audio / mixed
steps, DualFFN on some layers only, float16 weights; and the batched sampling it is used with."""

from __future__ import annotations

import pytest
import torch

from cadenza.core.sampling import repetition_aware_resample, sample_from_uniforms
from cadenza.higgs_audio.configuration import HiggsAudioConfig
from cadenza.higgs_audio.fast_decoder import HiggsAudioDecoder
from cadenza.higgs_audio.modeling import HiggsAudioModel, KVCache
from cadenza.higgs_audio.sampler import BatchSampler

CODEBOOK_SIZE, N_Q, VOCAB = 16, 4, 128
PROMPT_LEN = 9
# Rows 1 and 2 are left padded; the steps cover every routing case, twice the mixed one.
STEPS = ["audio", "text", "mixed", "audio", "mixed"]
MIXED_AUDIO_ROWS = torch.tensor([True, False, True])



def _model(**overrides) -> HiggsAudioModel:
    """Weights large enough (and norms far enough from 1) that a wrong fold or rotation shows in the logits."""
    config = HiggsAudioConfig.tiny(audio_codebook_size=CODEBOOK_SIZE, audio_num_codebooks=N_Q, initializer_range=0.1,
                                   **overrides)
    torch.manual_seed(0)
    model = HiggsAudioModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model


def _prompt(batch: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    audio_mask = torch.zeros(batch, PROMPT_LEN, dtype=torch.bool)
    audio_mask[:, 3:7] = True
    attention = torch.ones(batch, PROMPT_LEN, dtype=torch.long)
    attention[1, :3] = 0
    attention[2, :5] = 0
    return {"input_ids": torch.randint(0, VOCAB, (batch, PROMPT_LEN), generator=gen),
            "audio_codes": torch.randint(0, CODEBOOK_SIZE + 2, (batch, N_Q, PROMPT_LEN), generator=gen),
            "audio_mask": audio_mask, "attention_mask": attention}


def _logit_errors(model: HiggsAudioModel, weight_dtype: torch.dtype) -> list[float]:
    """Max |logit difference| of decoder vs model.forward (all heads) at every step of STEPS; a model with a
    transcript pointer is also fed spoken transcript tokens (-1 in some rows: none)."""
    prompt, batch = _prompt(), 3
    reference, fast = KVCache(model.config, batch, PROMPT_LEN + 8), KVCache(model.config, batch, PROMPT_LEN + 8)
    with torch.no_grad():
        model(**prompt, past_key_values=reference)
        model(**prompt, past_key_values=fast)
    decoder = HiggsAudioDecoder(model, weight_dtype)
    state = decoder.start(fast, prompt["attention_mask"])
    attention, gen, errors = prompt["attention_mask"], torch.Generator().manual_seed(2), []
    for kind in STEPS:
        ids = torch.randint(0, VOCAB, (batch,), generator=gen)
        codes = torch.randint(0, CODEBOOK_SIZE + 2, (batch, N_Q), generator=gen)
        audio_rows = MIXED_AUDIO_ROWS if kind == "mixed" else torch.full((batch,), kind == "audio")
        spoken = torch.randint(-1, VOCAB, (batch,), generator=gen).masked_fill(~audio_rows, -1)
        attention = torch.cat([attention, torch.ones(batch, 1, dtype=attention.dtype)], dim=1)
        with torch.no_grad():
            expected = model(input_ids=ids[:, None], audio_codes=codes[:, :, None], audio_mask=audio_rows[:, None],
                             attention_mask=attention, past_key_values=reference,
                             spoken_ids=spoken[:, None]).hidden_states[:, -1]
        if kind == "audio":
            hidden = decoder.step(state, audio_codes=codes, spoken_ids=spoken)
        elif kind == "text":
            hidden = decoder.step(state, input_ids=ids)
        else:
            hidden = decoder.step(state, ids, codes, audio_rows, spoken_ids=spoken)
        with torch.no_grad():
            heads = [(decoder.text_logits, model.text_logits), (decoder.audio_logits, model.audio_logits)]
            if model.config.transcript_pointer:
                heads.append((decoder.pointer_logits, model.pointer_head))
            errors.append(max(float((fast_head(hidden) - head(expected)).abs().max()) for fast_head, head in heads))
    assert fast.length == reference.length == PROMPT_LEN + len(STEPS)
    return errors


@pytest.mark.parametrize("overrides", [{}, {"audio_dual_ffn_layers": [1]}, {"transcript_pointer": True}])
def test_float32_steps_match_the_model(overrides):
    """Left padding, per-row positions and DualFFN routing (on all layers, or on layer 1 of 2 only), and the
    spoken tokens and pointer head of a transcript pointer."""
    errors = _logit_errors(_model(**overrides), torch.float32)
    assert max(errors) < 1e-4, errors


def test_float16_weights_stay_close():
    errors = _logit_errors(_model(), torch.float16)
    assert max(errors) < 1e-2, errors


def test_a_finished_row_does_not_change_the_others():
    """Whatever a done row is fed (here: text or audio), the other rows' hidden states are the same."""
    model, prompt = _model(), _prompt()
    outs = []
    for dummy_is_audio in (False, True):
        cache = KVCache(model.config, 3, PROMPT_LEN + 2)
        with torch.no_grad():
            model(**prompt, past_key_values=cache)
        decoder = HiggsAudioDecoder(model)
        state = decoder.start(cache, prompt["attention_mask"])
        ids, codes = torch.tensor([5, 6, 7]), torch.arange(3 * N_Q).view(3, N_Q) % CODEBOOK_SIZE
        outs.append(decoder.step(state, ids, codes, torch.tensor([dummy_is_audio, True, True])))
    # Rows routed through the text or the audio FFN change the batch's matmul blocking, which moves float32
    # sums by ~1e-6 on some CPUs (AVX-512 oneDNN kernels): equal up to that, while the fed row differs by far more.
    torch.testing.assert_close(outs[0][1:], outs[1][1:], atol=1e-5, rtol=0)
    assert not torch.allclose(outs[0][0], outs[1][0], atol=1e-3)


def test_shared_prefix_attention_equals_per_row_attention():
    """Rows whose cache begins with one prefix (then left-padded rows of their own): reading the prefix once
    for the batch gives the per-row result."""
    model, prompt = _model(), _prompt()
    shared = 4
    for key in ("input_ids", "audio_codes", "audio_mask"):  # every row begins with row 0's first positions
        prompt[key][1:, ..., :shared] = prompt[key][:1, ..., :shared]
    prompt["attention_mask"][:, :shared] = 1
    prompt["attention_mask"][1, shared:shared + 2] = 0  # padding after the prefix
    outs = []
    for prefix in (0, shared):
        cache = KVCache(model.config, 3, PROMPT_LEN + 3)
        with torch.no_grad():
            model(**prompt, past_key_values=cache)
        decoder = HiggsAudioDecoder(model)
        decoder.shared_prefix_min_batch = 2
        state = decoder.start(cache, prompt["attention_mask"], shared=prefix)
        assert state.shared == prefix
        codes = torch.arange(3 * N_Q).view(3, N_Q) % CODEBOOK_SIZE
        outs.append(torch.stack([decoder.step(state, audio_codes=codes + k) for k in range(3)]))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=0)
    cache.length = PROMPT_LEN
    with pytest.raises(ValueError, match="must not be padded"):
        decoder.start(cache, prompt["attention_mask"], shared=PROMPT_LEN)


def test_full_cache_is_an_error():
    model, prompt = _model(), _prompt()
    cache = KVCache(model.config, 3, PROMPT_LEN)
    with torch.no_grad():
        model(**prompt, past_key_values=cache)
    state = HiggsAudioDecoder(model).start(cache, prompt["attention_mask"])
    with pytest.raises(ValueError, match="full"):
        HiggsAudioDecoder(model).step(state, input_ids=torch.zeros(3, dtype=torch.long))


# ------------------------------------------------------------------------------------- batched sampling

LOGITS = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))


def test_inverse_cdf_follows_the_filters_per_row():
    uniforms = torch.linspace(0, 0.999, 200)
    logits = LOGITS[:1].expand(200, 4)
    seen = set(sample_from_uniforms(logits, uniforms, 1.0, top_p=0.7).tolist())
    assert seen == {0, 1}  # 0.5 + 0.3 reach 0.7
    assert set(sample_from_uniforms(logits, uniforms, 1.0, top_k=3).tolist()) == {0, 1, 2}
    assert set(sample_from_uniforms(logits, uniforms, 1.0, min_p=0.5).tolist()) == {0, 1}
    picks = sample_from_uniforms(logits, uniforms, 1.0)
    torch.testing.assert_close(torch.bincount(picks, minlength=4).float() / 200, LOGITS[0].exp(), atol=0.02, rtol=0)
    # per-row settings: row 0 greedy, row 1 top-k 2, row 2 unfiltered
    rows = LOGITS[[0, 1, 1]]
    for u in (0.0, 0.5, 0.99):
        picked = sample_from_uniforms(rows, torch.full((3,), u), torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0, 2, 0]))
        assert picked[0] == 0 and picked[1] in (3, 2)
    # u near 1 lands on the least probable token kept: token 0 (0.05) where nothing filters it, 2 under top-k 2
    assert sample_from_uniforms(rows, torch.full((3,), 0.99), 1.0, torch.tensor([0, 2, 0]))[1:].tolist() == [2, 0]
    assert sample_from_uniforms(rows, torch.full((3,), 0.01), 1.0, torch.tensor([0, 2, 0]))[1:].tolist() == [3, 3]
    # one temperature of 0 for every row: greedy
    assert sample_from_uniforms(rows, torch.full((3,), 0.99), 0.0, top_p=0.95).tolist() == [0, 3, 3]


def test_repetition_aware_resample_only_where_stuck():
    picked = torch.tensor([0, 3])
    history = torch.tensor([[0, 0, 0, -1], [1, 2, 1, 2]])
    out = {tuple(repetition_aware_resample(LOGITS, picked, history, 3, torch.full((2,), u)).tolist())
           for u in torch.linspace(0, 0.99, 50).tolist()}
    assert {o[1] for o in out} == {3} and len({o[0] for o in out}) > 1


def test_batch_sampler_rows_are_independent_of_their_batch():
    """A row's columns depend on its logits and its own generator only, and follow the delay pattern."""
    class Settings:
        temperature, top_k, top_p, ras_win_len, ras_win_max_num_repeat = 0.9, None, 0.95, 4, 1

    def columns(batch: int, steps: int = 8) -> list[torch.Tensor]:
        generators = [torch.Generator().manual_seed(10 + i) for i in range(batch)]
        sampler = BatchSampler([Settings()] * batch, generators, N_Q, CODEBOOK_SIZE, CODEBOOK_SIZE + 1)
        logits_gen, out = torch.Generator().manual_seed(0), []
        for _ in range(steps):
            logits = torch.randn(1, N_Q, CODEBOOK_SIZE + 2, generator=logits_gen).expand(batch, -1, -1).clone()
            logits[:, 0, CODEBOOK_SIZE + 1] = -1e4  # no end of audio within these steps
            out.append(sampler.audio_columns(list(range(batch)), logits, every_row=True)[0])
        return out

    alone, batched = columns(1), columns(3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(alone, batched))
    assert not all(torch.equal(b[0], b[1]) for b in batched)  # other seeds, other columns
    assert alone[0].tolist() == [[CODEBOOK_SIZE] * N_Q]  # column 0 is all BOS
    assert alone[2][0, 2:].tolist() == [CODEBOOK_SIZE] * (N_Q - 2)  # column 2: codebooks >= 2 still BOS
    assert int(torch.stack(alone[4:]).max()) < CODEBOOK_SIZE
