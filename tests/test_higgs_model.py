"""HiggsAudioModel on tiny configs: save/load, DualFFN routing, embeddings, KV cache, losses."""

from __future__ import annotations

import copy

import pytest
import torch

from cadenza.higgs_audio.configuration import HiggsAudioConfig
from cadenza.higgs_audio.modeling import HiggsAudioModel, KVCache

CODEBOOK_SIZE = 16
N_Q = 4



def _config(**overrides) -> HiggsAudioConfig:
    return HiggsAudioConfig.tiny(audio_codebook_size=CODEBOOK_SIZE, audio_num_codebooks=N_Q, **overrides)


def _model(seed: int = 0, **overrides) -> HiggsAudioModel:
    torch.manual_seed(seed)
    return HiggsAudioModel(_config(**overrides)).eval()


def _batch(B: int = 2, L: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """Text prefix, then an audio span, then text again."""
    gen = torch.Generator().manual_seed(seed)
    audio_mask = torch.zeros(B, L, dtype=torch.bool)
    audio_mask[:, L // 3: L - 2] = True
    return {
        "input_ids": torch.randint(0, 128, (B, L), generator=gen),
        "audio_codes": torch.randint(0, CODEBOOK_SIZE + 2, (B, N_Q, L), generator=gen),
        "audio_mask": audio_mask,
    }


def _labels(batch: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    B, L = batch["input_ids"].shape
    text_labels = torch.randint(0, 128, (B, L), generator=gen).masked_fill(batch["audio_mask"], -100)
    audio_labels = torch.randint(0, CODEBOOK_SIZE + 2, (B, N_Q, L), generator=gen)
    audio_labels = audio_labels.masked_fill(~batch["audio_mask"][:, None], -100)
    audio_labels[:, 1:, L // 3] = -100  # delay-pattern fill: some codebooks unlabelled at a position
    return {"text_labels": text_labels, "audio_labels": audio_labels}


@torch.no_grad()
def _hidden(model: HiggsAudioModel, batch: dict[str, torch.Tensor], **kwargs) -> torch.Tensor:
    return model(**batch, **kwargs).hidden_states


def test_config_round_trip_and_presets(tmp_path) -> None:
    config = _config(audio_dual_ffn_layers=[1], audio_intermediate_size=96, audio_out_token_id=42)
    config.save_pretrained(tmp_path)
    loaded = HiggsAudioConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert (loaded.audio_dual_ffn_layers, loaded.audio_out_token_id) == ([1], 42)
    assert (config.audio_stream_bos_id, config.audio_stream_eos_id, config.head_dim) == (16, 17, 16)
    defaults = HiggsAudioConfig.tiny()
    assert defaults.audio_dual_ffn_layers == [0, 1] and defaults.audio_intermediate_size == 128
    paper = HiggsAudioConfig.paper()
    assert (paper.head_dim, paper.num_hidden_layers, paper.text_vocab_size) == (128, 28, 128256)
    assert HiggsAudioConfig.small(num_hidden_layers=4).num_hidden_layers == 4
    with pytest.raises(ValueError, match="audio_dual_ffn_layers"):
        HiggsAudioConfig.tiny(audio_dual_ffn_layers=[2])


def test_model_save_load_round_trip(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, batch = _model(audio_dual_ffn_layers=[0]), _batch()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = HiggsAudioModel.from_pretrained(tmp_path).eval()
    assert not hasattr(loaded.layers[1], "audio_mlp")
    assert torch.equal(_hidden(model, batch), _hidden(loaded, batch))


def test_audio_mlp_changes_only_audio_positions() -> None:
    model, batch = _model(), _batch()
    before = _hidden(model, batch)
    with torch.no_grad():
        model.layers[-1].audio_mlp.down_proj.weight.add_(1.0)  # last layer: no later attention spreads it
    changed = (_hidden(model, batch) - before).abs().amax(-1) > 1e-4
    assert torch.equal(changed, batch["audio_mask"])


def test_excluded_layer_runs_text_path_for_audio() -> None:
    dual, batch = _model(), _batch()
    text_only = HiggsAudioModel(_config(audio_dual_ffn_layers=[0])).eval()
    assert not hasattr(text_only.layers[1], "audio_mlp")
    # Copy the shared weights, and make layer 1's audio path of `dual` identical to its text path.
    text_only.load_state_dict(dual.state_dict(), strict=False)
    layer = dual.layers[1]
    layer.audio_input_layernorm.load_state_dict(layer.input_layernorm.state_dict())
    layer.audio_post_attention_layernorm.load_state_dict(layer.post_attention_layernorm.state_dict())
    layer.audio_mlp.load_state_dict(layer.mlp.state_dict())
    torch.testing.assert_close(_hidden(text_only, batch), _hidden(dual, batch), atol=1e-6, rtol=0)


def test_frame_embedding_is_sum_of_codebook_embeddings() -> None:
    model, batch = _model(), _batch()
    codes = batch["audio_codes"]  # [B, n_q, L]
    table = model.audio_codebook_embeddings.weight
    manual = sum(table[codes[:, k] + k * (CODEBOOK_SIZE + 2)] for k in range(N_Q))  # [B, L, D]
    torch.testing.assert_close(model.embed_audio_frames(codes.transpose(1, 2)), manual)
    # In the model input, audio positions carry the frame embedding whatever their (placeholder) text id.
    placeholder_ids = batch["input_ids"].masked_fill(batch["audio_mask"], 10_000)
    embedded = model._embed(placeholder_ids, codes, batch["audio_mask"])
    mask = batch["audio_mask"]
    torch.testing.assert_close(embedded[mask], manual[mask])
    torch.testing.assert_close(embedded[~mask], model.embed_tokens(batch["input_ids"])[~mask])


def test_kv_cached_steps_equal_full_forward() -> None:
    model, batch = _model(), _batch(L=9)
    full = _hidden(model, batch)
    cache, pieces, start = KVCache(model.config, batch_size=2, max_len=12), [], 0
    for size in (4, 1, 1, 3):  # a prefill, single steps, then a chunk
        chunk = {k: v[..., start:start + size] for k, v in batch.items()}
        pieces.append(_hidden(model, chunk, past_key_values=cache))
        start += size
    assert cache.length == 9
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_len"):
        model(**{k: v[..., :4] for k, v in batch.items()}, past_key_values=cache)


def test_left_padded_cached_batch_equals_rows_alone() -> None:
    model = _model()
    rows = [_batch(B=1, L=5, seed=1), _batch(B=1, L=8, seed=2)]
    prompt_len, steps = 8, 3
    width = prompt_len + steps
    # Each row: its own prompt, left padded to 8, then 3 decode steps from one continuation of length 3.
    seqs = [{k: torch.cat([v, _batch(B=1, L=steps, seed=9)[k]], dim=-1) for k, v in row.items()} for row in rows]
    padded, attention_mask = {}, torch.zeros(2, width, dtype=torch.long)
    for key in seqs[0]:
        parts = []
        for i, seq in enumerate(seqs):
            pad = width - seq[key].shape[-1]
            fill = torch.zeros(*seq[key].shape[:-1], pad, dtype=seq[key].dtype)
            parts.append(torch.cat([fill, seq[key]], dim=-1))
        padded[key] = torch.cat(parts)
    for i, seq in enumerate(seqs):
        attention_mask[i, width - seq["input_ids"].shape[-1]:] = 1

    # No query is left without a key to attend to (some SDPA backends return NaN for such a row).
    assert HiggsAudioModel._attention_mask(attention_mask, 0, width, "cpu").any(-1).all()
    cache = KVCache(model.config, batch_size=2, max_len=width)
    outs = [_hidden(model, {k: v[..., :prompt_len] for k, v in padded.items()},
                    attention_mask=attention_mask[:, :prompt_len], past_key_values=cache)]
    for t in range(prompt_len, width):
        outs.append(_hidden(model, {k: v[..., t:t + 1] for k, v in padded.items()},
                            attention_mask=attention_mask[:, :t + 1], past_key_values=cache))
    batched = torch.cat(outs, dim=1)
    uncached = _hidden(model, padded, attention_mask=attention_mask)
    assert batched.isfinite().all()
    for i, seq in enumerate(seqs):
        alone = _hidden(model, seq)
        n = alone.shape[1]
        torch.testing.assert_close(batched[i, -n:], alone[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(uncached[i, -n:], alone[0], atol=1e-5, rtol=0)


def test_right_padding_does_not_change_real_positions() -> None:
    model, batch = _model(), _batch()
    attention_mask = torch.ones(2, 10, dtype=torch.long)
    attention_mask[1, 6:] = 0
    padded = _hidden(model, batch, attention_mask=attention_mask)
    alone = _hidden(model, {k: v[1:, ..., :6] for k, v in batch.items()})
    torch.testing.assert_close(padded[1, :6], alone[0], atol=1e-5, rtol=0)


def test_loss_decreases_on_tiny_batch() -> None:
    model, batch = _model(), _batch()
    labels = _labels(batch)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(**batch, **labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_losses_and_every_parameter_gets_a_gradient() -> None:
    model, batch = _model(), _batch()
    labels = _labels(batch)
    out = model(**batch, **labels)
    torch.testing.assert_close(out.loss, out.text_loss + out.audio_loss)
    # Mean over labelled entries: uniform logits give log(vocab) for each term.
    with torch.no_grad():
        model.text_lm_head.weight.zero_()
        model.audio_lm_head.weight.zero_()
    uniform = model(**batch, **labels)
    torch.testing.assert_close(uniform.text_loss, torch.log(torch.tensor(128.0)))
    torch.testing.assert_close(uniform.audio_loss, torch.log(torch.tensor(CODEBOOK_SIZE + 2.0)))

    model = _model()
    no_text = {**labels, "text_labels": torch.full_like(labels["text_labels"], -100)}
    out = model(**batch, **no_text)
    assert out.loss.isfinite() and out.text_loss == 0
    torch.testing.assert_close(out.loss, out.audio_loss)
    out.loss.backward()  # DDP-safety: nothing unused, even the idle text head
    assert [name for name, p in model.named_parameters() if p.grad is None] == []

    no_audio = {**labels, "audio_labels": torch.full_like(labels["audio_labels"], -100)}
    out = model(**batch, **no_audio)
    assert out.loss.isfinite() and out.audio_loss == 0
    assert model(**batch).loss is None


def test_bfloat16_autocast_and_gradient_checkpointing() -> None:
    model, batch = _model(), _batch()
    labels = _labels(batch)
    model.train()
    reference = model(**batch, **labels)
    reference.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    checkpointed = model(**batch, **labels)
    checkpointed.loss.backward()
    torch.testing.assert_close(checkpointed.loss, reference.loss)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-4)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch, **labels)
        out.loss.backward()
        cache = KVCache(model.config, batch_size=2, max_len=10, dtype=torch.bfloat16)
        cached = copy.deepcopy(model).eval()(**batch, past_key_values=cache)
    assert out.loss.isfinite() and cached.hidden_states.isfinite().all()
    torch.testing.assert_close(out.loss.float(), reference.loss, atol=0.05, rtol=0)


def test_guided_attention_loss_is_low_on_the_diagonal_and_high_off_it() -> None:
    from cadenza.higgs_audio.modeling import guided_attention_loss

    L, T = 12, 4  # transcript (T tokens) at positions 1..4, trained audio (6 frames) at 6..11
    alignment = torch.full((1, 2, L), -1.0)
    alignment[0, 0, 1:5] = (torch.arange(T) + 0.5) * 1.5  # token k spoken at frames 1.5 k .. 1.5 (k + 1)
    alignment[0, 1, 6:] = torch.arange(6.0)
    scale = 20.0  # sharp attention: queries and keys are one-hot "place" vectors
    keys = torch.zeros(1, 1, L, T + 1)
    keys[0, 0, 1:5, :T] = torch.eye(T) * scale
    keys[0, 0, torch.arange(L) >= 5, T] = scale  # everything else (and the audio) looks alike
    diagonal = torch.zeros(1, 1, L, T + 1)
    diagonal[0, 0, 6:, :T] = torch.eye(T)[(alignment[0, 1, 6:] / 1.5).long()]
    elsewhere = torch.zeros(1, 1, L, T + 1)
    elsewhere[0, 0, :, T] = 1.0  # audio reads only audio
    low = guided_attention_loss(diagonal, keys, None, alignment, sigma=1.0)
    high = guided_attention_loss(elsewhere, keys, None, alignment, sigma=1.0)
    assert 0 <= low < 0.2 and high > 0.95


def test_guided_layers_and_codebook_weights_shape_the_loss() -> None:
    batch = _batch()
    labels = _labels(batch)
    L = batch["input_ids"].shape[1]
    alignment = torch.full((2, 2, L), -1.0)
    audio = batch["audio_mask"][0].nonzero().squeeze(1)
    alignment[:, 0, : L // 3] = (torch.arange(L // 3) + 0.5) * len(audio) / (L // 3)
    alignment[:, 1, audio] = torch.arange(len(audio), dtype=torch.float)
    model = _model(guided_attention_layers=[1], guided_attention_weight=0.5)
    out = model(**batch, **labels, alignment_labels=alignment)
    assert 0 < out.alignment_loss <= 1
    torch.testing.assert_close(out.loss, out.text_loss + out.audio_loss + 0.5 * out.alignment_loss)
    out.loss.backward()
    assert model.layers[1].self_attn.q_proj.weight.grad is not None
    assert _model().forward(**batch, **labels, alignment_labels=alignment).alignment_loss is None  # no guided layer
    # weights [1, 0, ...]: the audio loss is the first codebook's mean cross-entropy alone
    first_only = _model(audio_codebook_loss_weights=[1.0] + [0.0] * (N_Q - 1))
    hidden = first_only(**batch).hidden_states
    targets = labels["audio_labels"][:, 0]
    logits = first_only.audio_logits(hidden)[..., 0, :][targets != -100]
    expected = torch.nn.functional.cross_entropy(logits, targets[targets != -100])
    out = first_only(**batch, **labels)
    torch.testing.assert_close(out.audio_loss, expected)
    torch.testing.assert_close(out.audio_codebook_losses[0], expected)  # per codebook: unweighted
    assert out.audio_codebook_losses.shape == (N_Q,) and bool((out.audio_codebook_losses[1:] > 0).all())
    with pytest.raises(ValueError, match="audio_codebook_loss_weights"):
        _config(audio_codebook_loss_weights=[1.0])
    with pytest.raises(ValueError, match="guided_attention_layers"):
        _config(guided_attention_layers=[5])


def test_transcript_pointer_reads_spoken_tokens_at_audio_positions_and_learns_its_steps() -> None:
    model, batch = _model(transcript_pointer=True, pointer_max_step=3), _batch()
    labels = _labels(batch)
    B, L = batch["input_ids"].shape
    spoken = torch.full((B, L), -1).masked_scatter(batch["audio_mask"], torch.randint(0, 128, (B, L)))
    spoken[0, L // 3] = -1  # an audio position that speaks nothing
    steps = torch.randint(0, 4, (B, L)).masked_fill(~batch["audio_mask"], -100)
    plain, read = _hidden(model, batch), _hidden(model, batch, spoken_ids=spoken)
    first = int(batch["audio_mask"][0].nonzero()[0])  # causal: nothing before the first spoken position changes
    torch.testing.assert_close(plain[:, :first], read[:, :first])
    torch.testing.assert_close(plain[0, first], read[0, first])  # the position that speaks nothing
    assert not torch.allclose(plain[:, first + 1:], read[:, first + 1:])
    out = model(**batch, **labels, spoken_ids=spoken, pointer_labels=steps)
    torch.testing.assert_close(out.loss, out.text_loss + out.audio_loss + out.pointer_loss)
    with torch.no_grad():
        model.pointer_head.weight.zero_()
    uniform = model(**batch, spoken_ids=spoken, pointer_labels=steps).pointer_loss
    torch.testing.assert_close(uniform, torch.log(torch.tensor(4.0)))
    # DDP-safety: the pointer head gets a (zero) gradient even when no position has a pointer label
    model = _model(transcript_pointer=True)
    model(**batch, **labels, spoken_ids=spoken, pointer_labels=torch.full((B, L), -100)).loss.backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    # a model without a pointer ignores both
    without = _model()
    torch.testing.assert_close(_hidden(without, batch), _hidden(without, batch, spoken_ids=spoken))
    assert without(**batch, **labels, spoken_ids=spoken, pointer_labels=steps).pointer_loss is None


def test_dropout_acts_only_while_training() -> None:
    batch = _batch()
    plain, dropped = _model(seed=3), _model(seed=3, dropout=0.1, audio_input_dropout=0.5)
    torch.testing.assert_close(_hidden(dropped, batch), _hidden(plain, batch))  # eval: no dropout
    dropped.train()
    assert not torch.allclose(_hidden(dropped, batch), _hidden(plain, batch))
    text_only = {**batch, "audio_mask": torch.zeros_like(batch["audio_mask"])}
    input_only = _model(seed=3, audio_input_dropout=0.5).train()
    torch.testing.assert_close(_hidden(input_only, text_only), _hidden(plain, text_only))  # text is never dropped
