"""Fast incremental decoding for the Staria generator's x-transformers decoder.

x-transformers' own `generate(cache_kv=True)` pays for its generality at every step: dozens of optional
features checked per layer, the cache grown by concatenation, cross-attention keys and values projected
again from the encoder output. `CachedDecoder` repacks the same weights once and runs a plain pre-norm
decoder step with as few tensor operations as possible, since at batch 1 the per-operation overhead, not
the arithmetic, is what a CPU spends its time on:

- one projection per self-attention layer yields q, k and v; rotary positions are one gather and one
  multiply-add (the "rotated half" is a fixed permutation whose signs are folded into the sine table);
  the attention scale is folded into the q weights;
- cross-attention keys and values are projected once per prompt, keys stored transposed for `bmm`;
- a preallocated KV cache, `F.linear` on (out, in) weights, batched matrix products over batch x heads
  (`core/fast_decoder.py`, shared with Higgs Audio's decoder);
- optionally (`weight_dtype=torch.float16`, which the generator takes where this CPU multiplies it faster:
  `core.fast_decoder.fastest_weight_dtype`) half-precision projection weights: half the bytes to read
  per step, faster where a step is bound by reading weights, slower where the CPU multiplies float16
  slowly and the weights fit in its cache; the residual stream, attention and caches stay in float32.

In float32 its logits match the x-transformers forward pass within 1e-4, in float16 within 1e-2 (tested), so
it is a faster path through the same model, not a different model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from x_transformers import TransformerWrapper
from x_transformers.x_transformers import LayerNorm as XLayerNorm

from cadenza.core.fast_decoder import attend as _attend
from cadenza.core.fast_decoder import project as _project
from cadenza.staria.models import SectionPosition, SnippetHint, StariaSeq2Seq


@dataclass
class _SelfAttention:
    norm: torch.Tensor
    qkv: torch.Tensor  # (3 * inner, dim), q pre-scaled
    out: torch.Tensor  # (dim, inner)


@dataclass
class _CrossAttention:
    norm: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor


@dataclass
class _FeedForward:
    norm: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor


class CachedDecoder:
    """The weights of a generator's decoder (an x-transformers `TransformerWrapper(Decoder(cross_attend=True))`)
    for fast decoding, with its section positions and snippet hints if it has them (tracked per row as
    tokens are fed)."""

    def __init__(self, model: StariaSeq2Seq, weight_dtype: torch.dtype = torch.float32) -> None:
        decoder = model.decoder
        layers = decoder.attn_layers
        position = self.section_position = model.section_position
        self.vocab_size = model.cfg.vocab_size
        if position is not None:  # single-token steps read a precomputed (letter, offset) table
            self.section_table = position.table().detach()
            self.letter_of = np.zeros(self.vocab_size, dtype=np.int64)  # letter 1.. of each section token, else 0
            self.letter_of[position.section_ids.numpy()] = np.arange(1, len(position.section_ids) + 1)
        self.hint_vectors = None  # every token's hint vector, and zeros (row vocab_size) for no hint
        self.repeat_hint = model.cfg.repeat_hint
        self.relative_onsets = model.cfg.relative_onset_hints
        if self.repeat_hint or self.relative_onsets:  # hints looked up and tracked per token, in numpy
            # tokens a first occurrence writes into the hint table (not section, <T>, prompt end)
            self.writable = self.letter_of == 0
            self.writable[[position.time_id, position.prompt_end_id]] = False
        if model.snippet_hint is not None:
            ids = torch.arange(self.vocab_size + 1)
            self.hint_vectors = model.snippet_hint(ids, decoder.token_emb.emb.weight).detach()
        if layers.rotary_pos_emb is None or not layers.causal:
            raise ValueError("CachedDecoder expects a causal x-transformers decoder with rotary positions")
        self.embedding = decoder.token_emb.emb.weight.detach()
        self.to_logits = decoder.to_logits.weight.detach()
        self.final_norm = _layer_norm_weight(layers.final_norm)
        self.dim = self.embedding.shape[1]
        self.inv_freq = layers.rotary_pos_emb.inv_freq.detach()
        self.rot_dim = self.inv_freq.shape[0] * 2
        self.blocks: list[_SelfAttention | _CrossAttention | _FeedForward] = []
        for kind, (norms, block, _residual) in zip(layers.layer_types, layers.layers):
            gamma = _layer_norm_weight(norms[0])
            if kind == "a":
                self.heads, self.head_dim = block.heads, block.to_q.weight.shape[0] // block.heads
                self.blocks.append(_SelfAttention(gamma, self._self_projection(block), block.to_out.weight.detach()))
            elif kind == "c":
                scale = self.head_dim ** -0.5
                self.blocks.append(_CrossAttention(gamma, block.to_q.weight.detach() * scale,
                                                   block.to_k.weight.detach(), block.to_v.weight.detach(),
                                                   block.to_out.weight.detach()))
            elif kind == "f":
                first, last = block.ff[0][0], block.ff[2]
                self.blocks.append(_FeedForward(gamma, first.weight.detach(), first.bias.detach(),
                                                last.weight.detach(), last.bias.detach()))
            else:
                raise ValueError(f"unsupported x-transformers layer type {kind!r}")
        self.n_self = sum(isinstance(b, _SelfAttention) for b in self.blocks)
        for block in self.blocks:  # projections in weight_dtype; norms stay float32
            for name, value in vars(block).items():
                if name != "norm":
                    setattr(block, name, value.to(weight_dtype))

    def _self_projection(self, block: nn.Module) -> torch.Tensor:
        """q (scaled by 1/sqrt(head_dim)), k and v weights stacked into one (3 * inner, dim) matrix."""
        q = block.to_q.weight.detach() * self.head_dim ** -0.5
        return torch.cat([q, block.to_k.weight.detach(), block.to_v.weight.detach()])

    # ---- state ----------------------------------------------------------------------------------

    def start(self, context: torch.Tensor, context_mask: torch.Tensor, max_len: int,
              prompt: torch.Tensor | None = None) -> "DecodeState":
        """Cache cross-attention keys/values for a batch of encoder states and allocate the KV cache;
        `prompt` (the ids the context encodes) is needed with snippet hints."""
        batch, length, _ = context.shape
        cross = []
        for block in self.blocks:
            if isinstance(block, _CrossAttention):
                k = self._heads(_project(context, block.k)).transpose(1, 2).contiguous()  # (B*H, head_dim, L)
                cross.append((k, self._heads(_project(context, block.v)).contiguous()))
        shape = (batch * self.heads, max_len, self.head_dim)
        cache_k = [torch.zeros(shape, dtype=context.dtype) for _ in range(self.n_self)]
        cache_v = [torch.zeros(shape, dtype=context.dtype) for _ in range(self.n_self)]
        positions = torch.arange(max_len, dtype=self.inv_freq.dtype)
        angles = torch.repeat_interleave(positions[:, None] * self.inv_freq[None, :], 2, dim=-1)
        # x-transformers rotates adjacent pairs of each head's first rot_dim features: x * cos + r * sin with
        # r[2i] = -x[2i + 1], r[2i + 1] = x[2i]. Here r = x[..., pair_swap] and the signs live in `sin`;
        # features past rot_dim are not rotated (cos 1, sin 0).
        unrotated = self.head_dim - self.rot_dim
        sign = torch.tensor([-1.0, 1.0]).repeat(self.rot_dim // 2)
        cos = torch.cat([angles.cos(), torch.ones(max_len, unrotated)], dim=-1).to(context.dtype)
        sin = torch.cat([angles.sin() * sign, torch.zeros(max_len, unrotated)], dim=-1).to(context.dtype)
        # Padded prompt positions become an additive -inf bias (None when nothing is padded).
        bias = None
        if not bool(context_mask.all()):
            bias = torch.zeros(context_mask.shape, dtype=context.dtype).masked_fill(~context_mask, float("-inf"))
            bias = bias[:, None, None, :].expand(batch, self.heads, 1, length).reshape(batch * self.heads, 1, length)
        hints = None
        if self.hint_vectors is not None:
            if prompt is None:
                raise ValueError("a model with snippet hints decodes with its prompt ids: pass prompt")
            hints = SnippetHint.table(self.section_position, prompt, context_mask, none=self.vocab_size,
                                      relative_onsets=self.relative_onsets)
        return DecodeState(cross, bias, cache_k, cache_v, cos, sin, self._pair_swap(),
                           letter=np.zeros(batch, dtype=np.int64), offset=np.full(batch, -1), hints=hints,
                           seen=None if hints is None else np.zeros(hints.shape[:2], dtype=bool),
                           first=np.ones(batch, dtype=bool), segments=np.zeros(batch, dtype=np.int64),
                           now=np.full(batch, -1, dtype=np.int64), section_onset=np.full(batch, -1, dtype=np.int64))

    def _pair_swap(self) -> torch.Tensor:
        """Feature order swapping each adjacent pair of the first rot_dim features (identity after)."""
        order = torch.arange(self.head_dim)
        order[:self.rot_dim] = order[:self.rot_dim].view(-1, 2).flip(-1).reshape(-1)
        return order

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, n, heads * head_dim) -> (batch * heads, n, head_dim)."""
        batch, n, _ = x.shape
        return x.view(batch, n, self.heads, self.head_dim).transpose(1, 2).reshape(batch * self.heads, n, self.head_dim)

    # ---- forward --------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, state: "DecodeState") -> torch.Tensor:
        """Logits (batch, vocab) after feeding `tokens` (batch, n) at the next n positions."""
        return self.logits(self.hidden(tokens, state))

    def logits(self, hidden: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """Output logits of final hidden states, for all ids or only the id range `rows` (the grammar
        often allows only onsets or only durations: computing 500 logits instead of 25k)."""
        return F.linear(hidden, self.to_logits[rows])

    def _section_inputs(self, tokens: torch.Tensor, state: "DecodeState") -> torch.Tensor:
        """Section position embeddings (+ snippet hints) (batch * n, dim) of tokens, advancing each row's
        letter and offset."""
        if tokens.shape[1] > 1:
            letters, offsets = self.section_position.locate(tokens, torch.from_numpy(state.letter),
                                                            torch.from_numpy(state.offset))
            extra = self.section_position.embed(letters, offsets)
            letters, offsets = letters.numpy(), offsets.numpy()
            state.letter, state.offset = letters[:, -1], offsets[:, -1]
        else:  # one token: in numpy (a dozen torch calls on tensors this small cost a tenth of a step)
            token = tokens[:, 0].numpy()
            letter = self.letter_of[token]
            starts = letter > 0
            state.letter = np.where(starts, letter, state.letter)
            counted = token != self.section_position.time_id  # <T> does not move the offset
            state.offset = np.where(starts, 0, state.offset + counted)
            letters, offsets = state.letter[:, None], state.offset[:, None]
            extra = self.section_table[torch.from_numpy(letters),
                                       torch.from_numpy(np.minimum(offsets, self.section_table.shape[1] - 1))]
        if state.hints is not None and (self.repeat_hint or self.relative_onsets):
            table, rows = state.hints.numpy(), np.arange(tokens.shape[0])
            hinted = np.empty(tokens.shape, dtype=np.int64)
            for j in range(tokens.shape[1]):  # as SnippetHint.lookup and resolve, in numpy (see _remember)
                token, letter, offset = tokens[:, j].numpy(), letters[:, j], offsets[:, j]
                entry = table[rows, letter, np.minimum(offset + 1, table.shape[2] - 1)]
                time = None
                if self.relative_onsets:
                    time = self._advance_time(token, state)
                    position = self.section_position
                    onset = position.onset_base + (state.now + (-1 - entry)) % position.onset_steps
                    entry = np.where(entry < 0, np.where(state.now >= 0, onset, self.vocab_size), entry)
                hinted[:, j] = entry
                if self.repeat_hint:  # each token reads the table before it writes to it
                    self._remember(token, letter, offset, time, state)
            extra = extra + self.hint_vectors[torch.from_numpy(hinted)]
        elif state.hints is not None:
            hinted = SnippetHint.lookup(state.hints, torch.from_numpy(letters), torch.from_numpy(offsets))
            extra = extra + self.hint_vectors[hinted]
        return extra.flatten(0, 1)

    def _advance_time(self, token: np.ndarray, state: "DecodeState") -> np.ndarray:
        """Each row's time in onset steps if its token is an onset, else -1; keeps `state.now` (the latest
        onset's time, `SectionPosition.onset_times`)."""
        position = self.section_position
        state.segments += token == position.time_id
        is_onset = position.is_onset(token)
        time = np.where(is_onset, state.segments * position.onset_steps + token - position.onset_base, -1)
        state.now = np.where(is_onset, time, state.now)
        return time

    def _remember(self, token: np.ndarray, letter: np.ndarray, offset: np.ndarray, time: np.ndarray | None,
                  state: "DecodeState") -> None:
        """Repeat hints: track which letters have begun in each row, and write a first occurrence's tokens into
        the row's hint table where its snippet has none, for the later sections of that letter to read (an
        onset after another of its section as -1 - the steps between them, with relative onsets).
        In numpy, on the table's memory: a dozen torch calls on tensors this small cost a quarter of a step."""
        table = state.hints.numpy()
        starts = self.letter_of[token] > 0
        if starts.any():
            rows = np.nonzero(starts)[0]
            state.first[rows] = ~state.seen[rows, letter[rows]]
            state.seen[rows, letter[rows]] = True
            state.section_onset[rows] = -1
        entry = token
        if self.relative_onsets:
            entry = np.where((time >= 0) & (state.section_onset >= 0), -1 - (time - state.section_onset), token)
            state.section_onset = np.where(time >= 0, time, state.section_onset)
        write = state.first & self.writable[token] & (letter > 0) & (offset > 0) & (offset < table.shape[2])
        if write.any():
            rows = np.nonzero(write)[0]
            rows = rows[table[rows, letter[rows], offset[rows]] == self.vocab_size]  # the snippet's entries stay
            table[rows, letter[rows], offset[rows]] = entry[rows]

    @torch.inference_mode()
    def hidden(self, tokens: torch.Tensor, state: "DecodeState") -> torch.Tensor:
        """Final-norm hidden state (batch, dim) of the last of `tokens` (batch, n) fed at the next n positions."""
        batch, n = tokens.shape
        start = state.length
        end = start + n
        cos, sin = state.cos[start:end], state.sin[start:end]
        causal = _causal(start, n)
        h = F.embedding(tokens.reshape(-1), self.embedding)  # (batch * n, dim)
        if self.section_position is not None:
            h = h + self._section_inputs(tokens, state)
        self_index = cross_index = 0
        for block in self.blocks:
            x = F.layer_norm(h, (self.dim,), weight=block.norm)
            if isinstance(block, _FeedForward):
                h = h + _project(F.gelu(_project(x, block.w1, block.b1)), block.w2, block.b2)
                continue
            if isinstance(block, _SelfAttention):
                proj = _project(x, block.qkv).view(batch, n, 3, self.heads, self.head_dim)
                proj = proj.permute(2, 0, 3, 1, 4).reshape(3, batch * self.heads, n, self.head_dim)
                qk = torch.addcmul(proj[:2] * cos, proj[:2, ..., state.pair_swap], sin)  # rotary q and k
                cache_k, cache_v = state.cache_k[self_index], state.cache_v[self_index]
                cache_k[:, start:end] = qk[1]
                cache_v[:, start:end] = proj[2]
                attn = _attend(qk[0], cache_k[:, :end].transpose(1, 2), cache_v[:, :end], causal)
                self_index += 1
            else:
                k_t, v = state.cross[cross_index]
                attn = _attend(self._heads(_project(x, block.q).view(batch, n, -1)), k_t, v, state.context_bias)
                cross_index += 1
            attn = attn.view(batch, self.heads, n, self.head_dim).transpose(1, 2).reshape(batch * n, -1)
            h = h + _project(attn, block.out)
        state.length = end
        return F.layer_norm(h.view(batch, n, -1)[:, -1], (self.dim,), weight=self.final_norm)


def _layer_norm_weight(norm: nn.Module) -> torch.Tensor:
    """The effective scale of an x-transformers LayerNorm (its gamma is stored minus `unit_offset`)."""
    if not isinstance(norm, XLayerNorm):
        raise ValueError(f"CachedDecoder supports x-transformers LayerNorm only, got {type(norm).__name__}")
    return (norm.gamma + float(norm.unit_offset)).detach()


def _causal(start: int, n: int) -> torch.Tensor | None:
    """Additive bias letting position start+i see keys 0..start+i (None for a single new token: it sees all)."""
    if n == 1:
        return None
    allowed = torch.ones(n, start + n, dtype=torch.bool).tril(diagonal=start)
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


@dataclass
class DecodeState:
    """Per-batch decoding state: cross-attention K/V, the self-attention KV cache, rotary tables, the
    section letter and offset of each row's last token (for section positions) and the snippet hints."""

    cross: list[tuple[torch.Tensor, torch.Tensor]]
    context_bias: torch.Tensor | None
    cache_k: list[torch.Tensor]
    cache_v: list[torch.Tensor]
    cos: torch.Tensor
    sin: torch.Tensor
    pair_swap: torch.Tensor
    letter: np.ndarray  # (batch,) section letter (0: before any section) and offset of each row's last token
    offset: np.ndarray
    hints: torch.Tensor | None = None  # snippet hint table (batch, letters, offsets) of the prompt
    seen: np.ndarray | None = None  # (batch, letters): which letters have begun (repeat hints)
    first: np.ndarray | None = None  # (batch,): the current section is its letter's first occurrence
    segments: np.ndarray | None = None  # (batch,): <T> tokens fed (relative onset hints)
    now: np.ndarray | None = None  # (batch,): time of the latest onset fed, in onset steps (-1: none yet)
    section_onset: np.ndarray | None = None  # (batch,): the latest onset's time in the current section (-1: none)
    length: int = 0
