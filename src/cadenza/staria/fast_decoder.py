"""Fast incremental decoding for the Staria generator's x-transformers decoder.

x-transformers' own `generate(cache_kv=True)` pays for its generality at every step: dozens of optional
features checked per layer, the cache grown by concatenation, cross-attention keys and values projected
again from the encoder output. `CachedDecoder` repacks the same weights once and runs a plain pre-norm
decoder step with as few tensor operations as possible, since at batch 1 the per-operation overhead and
reading the weights and caches, not the arithmetic, is what a CPU spends its time on:

- one projection per self-attention layer yields q, k and v; rotary positions are one complex product
  (x-transformers rotates adjacent feature pairs: a pair is a complex number turned by its angle), of q, k
  and v at once (v turned by 0); the attention scale is folded into the q weights;
- cross-attention keys and values are projected once per prompt; keys, here and in the preallocated
  self-attention cache, are stored transposed for `bmm`;
- weights transposed to (in, out) and an attention output or feed-forward result added to the residual
  stream by the projection itself (`addmm`), batched matrix products over batch x heads
  (`core/fast_decoder.py`, shared with Higgs Audio's decoder);
- the feed-forward's exact GELU as erf and one multiply-add, its constants folded into the weights
  (`F.gelu` goes through oneDNN on x86 and took longer than the rest of the feed-forward);
- section positions and snippet hints tracked per row in plain Python (`_Place`) and looked up in one
  table, one `embedding_bag` per step: numpy or torch calls on arrays of a few rows cost far more;
- optionally (`weight_dtype=torch.float16`, which the generator takes where this CPU multiplies it faster:
  `core.fast_decoder.fastest_weight_dtype`) half-precision projection weights: half the bytes to read
  per step, faster where a step is bound by reading weights, slower where the CPU multiplies float16
  slowly and the weights fit in its cache; the residual stream, biases, attention and caches stay in
  float32.

In float32 its logits match the x-transformers forward pass within 1e-4, in float16 within 1e-2 (tested), so
it is a faster path through the same model, not a different model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from x_transformers import TransformerWrapper
from x_transformers.x_transformers import LayerNorm as XLayerNorm

from cadenza.core.fast_decoder import attend as _attend
from cadenza.core.fast_decoder import PackedWeights
from cadenza.staria.models import SectionPosition, SnippetHint, StariaSeq2Seq


@dataclass
class _SelfAttention:
    norm: torch.Tensor
    qkv: torch.Tensor  # (dim, 3 * inner), q pre-scaled
    out: torch.Tensor  # (inner, dim)


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
    w1: torch.Tensor  # (dim, hidden), w1, b1 and w2 scaled by 1/sqrt(2) (see _gelu)
    b1: torch.Tensor
    w2: torch.Tensor  # (hidden, dim)
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
        self.hinted = model.snippet_hint is not None
        self.repeat_hint = model.cfg.repeat_hint
        self.relative_onsets = model.cfg.relative_onset_hints
        if position is not None:
            # Rows of `extra_inputs`, one table looked up once per step: each (letter, offset)'s section
            # position embedding, then each token's hint vector, and zeros (hint id vocab_size) for no hint.
            table = position.table().detach()
            self.max_offset, self.hint_base = table.shape[1], table.shape[0] * table.shape[1]
            extra = [table.flatten(0, 1)]
            if self.hinted:
                extra.append(model.snippet_hint(torch.arange(self.vocab_size + 1), decoder.token_emb.emb.weight))
            self.extra_inputs = torch.cat(extra).detach()
            # Tokens are tracked one at a time in Python (`_Place`): lists of ids' properties.
            self.letter_of = [0] * self.vocab_size  # letter 1.. of each section token, else 0
            for letter, token in enumerate(position.section_ids.tolist(), start=1):
                self.letter_of[token] = letter
            # tokens a first occurrence writes into the hint table (not section, <T>, prompt end)
            self.writable = [letter == 0 for letter in self.letter_of]
            self.writable[position.time_id] = self.writable[position.prompt_end_id] = False
        if layers.rotary_pos_emb is None or not layers.causal:
            raise ValueError("CachedDecoder expects a causal x-transformers decoder with rotary positions")
        self.embedding = decoder.token_emb.emb.weight.detach()
        self.to_logits = decoder.to_logits.weight.detach()
        self.final_norm = _layer_norm_weight(layers.final_norm)
        self.dim = self.embedding.shape[1]
        self.inv_freq = layers.rotary_pos_emb.inv_freq.detach()
        self.rot_dim = self.inv_freq.shape[0] * 2
        self.weights = PackedWeights(weight_dtype)  # half precision multiplied as is
        pack = self.weights.pack
        self.blocks: list[_SelfAttention | _CrossAttention | _FeedForward] = []
        for kind, (norms, block, _residual) in zip(layers.layer_types, layers.layers):
            gamma = _layer_norm_weight(norms[0])
            if kind in ("a", "c"):  # projection weights (in, out) in weight_dtype, q scaled by 1/sqrt(head_dim)
                self.heads, self.head_dim = block.heads, block.to_q.weight.shape[0] // block.heads
                q, k, v = (w.weight.detach() for w in (block.to_q, block.to_k, block.to_v))
                q, out = q * self.head_dim ** -0.5, pack(block.to_out.weight)
            if kind == "a":
                self.blocks.append(_SelfAttention(gamma, pack(torch.cat([q, k, v])), out))
            elif kind == "c":
                self.blocks.append(_CrossAttention(gamma, *(pack(w) for w in (q, k, v)), out))
            elif kind == "f":  # GELU's 1/sqrt(2)s folded in (_gelu); biases stay float32, as norms do
                (first, activation), last = block.ff[0], block.ff[2]
                if not (isinstance(activation, nn.GELU) and activation.approximate == "none"):
                    raise ValueError(f"CachedDecoder supports exact GELU feed-forwards only, got {activation}")
                w1, b1 = pack(first.weight * _SQRT_HALF), first.bias.detach() * _SQRT_HALF
                w2 = pack(last.weight * _SQRT_HALF)
                self.blocks.append(_FeedForward(gamma, w1, b1, w2, last.bias.detach()))
            else:
                raise ValueError(f"unsupported x-transformers layer type {kind!r}")
        self.n_self = sum(isinstance(b, _SelfAttention) for b in self.blocks)

    # ---- state ----------------------------------------------------------------------------------

    def start(self, context: torch.Tensor, context_mask: torch.Tensor, max_len: int,
              prompt: torch.Tensor | None = None) -> "DecodeState":
        """Cache cross-attention keys/values for a batch of encoder states and allocate the KV cache;
        `prompt` (the ids the context encodes) is needed with snippet hints."""
        batch, length, _ = context.shape
        project = self.weights.project
        cross = []
        for block in self.blocks:
            if isinstance(block, _CrossAttention):
                k = self._heads(project(context, block.k)).transpose(1, 2).contiguous()  # (B*H, head_dim, L)
                cross.append((k, self._heads(project(context, block.v)).contiguous()))
        cache_k = [torch.zeros(batch, self.heads, self.head_dim, max_len, dtype=context.dtype)
                   for _ in range(self.n_self)]  # keys transposed
        cache_v = [torch.zeros(batch, self.heads, max_len, self.head_dim, dtype=context.dtype)
                   for _ in range(self.n_self)]
        # x-transformers rotates adjacent pairs of each head's first rot_dim features: (x[2i], x[2i + 1]) by
        # angle i, x[2i] * cos - x[2i + 1] * sin and x[2i + 1] * cos + x[2i] * sin, which is the product of the
        # complex numbers x[2i] + j x[2i + 1] and cos + j sin. Pairs past rot_dim and all of v are turned by 0.
        angles = torch.arange(max_len, dtype=context.dtype)[:, None] * self.inv_freq.to(context.dtype)
        turn = torch.polar(torch.ones_like(angles), angles)  # cos + j sin
        rotary = torch.ones(max_len, 3, 1, self.head_dim // 2, dtype=turn.dtype)
        rotary[:, :2, :, :self.rot_dim // 2] = turn[:, None, None]
        # Padded prompt positions become an additive -inf bias (None when nothing is padded).
        bias = None
        if not bool(context_mask.all()):
            bias = torch.zeros(context_mask.shape, dtype=context.dtype).masked_fill(~context_mask, float("-inf"))
            bias = bias[:, None, None, :].expand(batch, self.heads, 1, length).reshape(batch * self.heads, 1, length)
        hints = None
        if self.hinted:
            if prompt is None:
                raise ValueError("a model with snippet hints decodes with its prompt ids: pass prompt")
            hints = SnippetHint.table(self.section_position, prompt, context_mask, none=self.vocab_size,
                                      relative_onsets=self.relative_onsets).tolist()
        places = None if self.section_position is None else [_Place(None if hints is None else hints[row])
                                                             for row in range(batch)]
        return DecodeState(cross, bias, cache_k, cache_v, rotary, places)

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
        """Section position embeddings (+ snippet hints) (batch * n, dim) of tokens, advancing each row's place.
        Tracked token by token in Python: the same in numpy took a tenth of a generation's time."""
        rows = [self._feed(place, token) for place, ids in zip(state.places, tokens.tolist()) for token in ids]
        return F.embedding_bag(torch.tensor(rows), self.extra_inputs, mode="sum")

    def _feed(self, place: "_Place", token: int) -> list[int]:
        """Advance a row's place past `token`; the token's rows of `extra_inputs`: its section position
        (letter, offset) and, with snippet hints, the id it is hinted with (`SnippetHint.lookup`, `resolve`)."""
        position = self.section_position
        letter = self.letter_of[token]
        if letter:
            place.letter, place.offset = letter, 0
        elif token != position.time_id:  # <T> does not move the offset
            place.offset += 1
        letter, offset = place.letter, place.offset
        section_row = letter * self.max_offset + min(max(offset, 0), self.max_offset - 1)  # -1: only <T> so far
        if place.hints is None:
            return [section_row]
        hints = place.hints[letter]
        hinted = hints[min(offset + 1, len(hints) - 1)]
        time = -1  # the token's time in onset steps if it is an onset (`SectionPosition.onset_times`)
        if self.relative_onsets:
            place.segments += token == position.time_id
            if position.onset_base <= token < position.onset_base + position.onset_steps:
                time = place.now = place.segments * position.onset_steps + token - position.onset_base
            if hinted < 0:  # an onset relative to the latest one
                hinted = (position.onset_base + (place.now + (-1 - hinted)) % position.onset_steps
                          if place.now >= 0 else self.vocab_size)
        if self.repeat_hint:  # each token reads the table before it writes to it
            self._remember(place, token, time)
        return [section_row, self.hint_base + hinted]

    def _remember(self, place: "_Place", token: int, time: int) -> None:
        """Repeat hints: track which letters have begun in a row, and write a first occurrence's tokens into the
        row's hint table where its snippet has none, for the later sections of that letter to read (an onset
        after another of its section as -1 - the steps between them, with relative onsets)."""
        letter, offset = place.letter, place.offset
        if self.letter_of[token]:  # a section starts
            place.first = letter not in place.seen
            place.seen.add(letter)
            place.section_onset = -1
        entry = token
        if time >= 0:
            if place.section_onset >= 0:
                entry = -1 - (time - place.section_onset)
            place.section_onset = time
        hints = place.hints[letter]
        if (place.first and self.writable[token] and letter > 0 and 0 < offset < len(hints)
                and hints[offset] == self.vocab_size):  # the snippet's entries stay
            hints[offset] = entry

    @torch.inference_mode()
    def hidden(self, tokens: torch.Tensor, state: "DecodeState") -> torch.Tensor:
        """Final-norm hidden state (batch, dim) of the last of `tokens` (batch, n) fed at the next n positions."""
        batch, n = tokens.shape
        heads, head_dim = self.heads, self.head_dim
        start = state.length
        end = start + n
        rotary = state.rotary[start:end]
        causal = _causal(start, n)
        h = F.embedding(tokens.reshape(-1), self.embedding)  # (batch * n, dim)
        if self.section_position is not None:
            h = h + self._section_inputs(tokens, state)
        self_index = cross_index = 0
        project = self.weights.project
        for block in self.blocks:
            x = F.layer_norm(h, (self.dim,), weight=block.norm)
            if isinstance(block, _FeedForward):
                h = project(_gelu(project(x, block.w1, block.b1)), block.w2, h) + block.b2
                continue
            if isinstance(block, _SelfAttention):
                qkv = project(x, block.qkv).view(batch, n, 3, heads, head_dim // 2, 2)
                qkv = torch.view_as_real(torch.view_as_complex(qkv) * rotary)  # rotary q and k
                qkv = qkv.view(batch, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
                q, k, v = qkv.unbind()  # each (batch, heads, n, head_dim)
                cache_k, cache_v = state.cache_k[self_index], state.cache_v[self_index]
                cache_k[..., start:end] = k.transpose(2, 3)
                cache_v[:, :, start:end] = v
                q = q.reshape(batch * heads, n, head_dim)
                attn = _attend(q, cache_k[..., :end].flatten(0, 1), cache_v[:, :, :end].flatten(0, 1), causal)
                self_index += 1
            else:
                k_t, v = state.cross[cross_index]
                attn = _attend(self._heads(project(x, block.q).view(batch, n, -1)), k_t, v, state.context_bias)
                cross_index += 1
            attn = attn.view(batch, heads, n, head_dim).transpose(1, 2).reshape(batch * n, -1)
            h = project(attn, block.out, h)  # the residual added by the projection
        state.length = end
        return F.layer_norm(h.view(batch, n, -1)[:, -1], (self.dim,), weight=self.final_norm)


def _layer_norm_weight(norm: nn.Module) -> torch.Tensor:
    """The effective scale of an x-transformers LayerNorm (its gamma is stored minus `unit_offset`)."""
    if not isinstance(norm, XLayerNorm):
        raise ValueError(f"CachedDecoder supports x-transformers LayerNorm only, got {type(norm).__name__}")
    return (norm.gamma + float(norm.unit_offset)).detach()


_SQRT_HALF = 0.5 ** 0.5


def _gelu(y: torch.Tensor) -> torch.Tensor:
    """sqrt(2) GELU(sqrt(2) y), the exact (erf) GELU of a projection scaled by 1/sqrt(2), whose result is scaled
    by 1/sqrt(2) too: y (1 + erf(y)), two operations. F.gelu on a step's 768 values took 4x longer (10 us)."""
    return torch.addcmul(y, y, torch.erf(y))


def _causal(start: int, n: int) -> torch.Tensor | None:
    """Additive bias letting position start+i see keys 0..start+i (None for a single new token: it sees all)."""
    if n == 1:
        return None
    allowed = torch.ones(n, start + n, dtype=torch.bool).tril(diagonal=start)
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


@dataclass
class DecodeState:
    """Per-batch decoding state: cross-attention K/V, the self-attention KV cache, rotary tables and where
    each row's piece has got to (section positions, snippet hints)."""

    cross: list[tuple[torch.Tensor, torch.Tensor]]
    context_bias: torch.Tensor | None
    cache_k: list[torch.Tensor]  # per self-attention layer (batch, heads, head_dim, max_len): keys transposed
    cache_v: list[torch.Tensor]  # (batch, heads, max_len, head_dim)
    rotary: torch.Tensor  # (max_len, 3, 1, head_dim / 2) complex: how each position turns q, k and v
    places: list["_Place"] | None  # each row's place in its piece (with section positions)
    length: int = 0


@dataclass
class _Place:
    """Where a row's piece has got to, after its last token fed: section positions and snippet hints."""

    hints: list[list[int]] | None  # snippet hint table [letter][offset] of the row's prompt (repeat hints add)
    letter: int = 0  # section letter (0: before any section)
    offset: int = -1  # tokens other than <T> since the section token
    seen: set[int] = field(default_factory=set)  # letters begun (repeat hints)
    first: bool = True  # the current section is its letter's first occurrence
    segments: int = 0  # <T> tokens fed (relative onset hints)
    now: int = -1  # time of the latest onset, in onset steps (-1: none yet)
    section_onset: int = -1  # time of the latest onset in the current section (-1: none)
