"""Fast incremental decoding for the Staria generator's x-transformers decoder.

x-transformers' own `generate(cache_kv=True)` pays for its generality at every step: dozens of optional
features checked per layer, the cache grown by concatenation, cross-attention keys and values projected
again from the encoder output. `CachedDecoder` repacks the same weights once (fused QKV, cross-attention
K/V computed once per prompt, rotary tables precomputed, a preallocated KV cache) and runs a plain
pre-norm decoder step. Its logits match the x-transformers forward pass (tested), so it is a faster
path through the same model, not a different model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from x_transformers import TransformerWrapper
from x_transformers.x_transformers import LayerNorm as XLayerNorm


@dataclass
class _SelfAttention:
    norm: torch.Tensor
    qkv: torch.Tensor  # (3 * inner, dim)
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
    """The weights of an x-transformers `TransformerWrapper(Decoder(cross_attend=True))` for fast decoding."""

    def __init__(self, decoder: TransformerWrapper) -> None:
        layers = decoder.attn_layers
        if layers.rotary_pos_emb is None or not layers.causal:
            raise ValueError("CachedDecoder expects a causal x-transformers decoder with rotary positions")
        self.embedding = decoder.token_emb.emb.weight.detach()
        self.to_logits = decoder.to_logits.weight.detach()
        self.final_norm = _layer_norm_weight(layers.final_norm)
        self.dim = self.embedding.shape[1]
        self.inv_freq = layers.rotary_pos_emb.inv_freq.detach()
        self.blocks: list[_SelfAttention | _CrossAttention | _FeedForward] = []
        for kind, (norms, block, _residual) in zip(layers.layer_types, layers.layers):
            gamma = _layer_norm_weight(norms[0])
            if kind == "a":
                self.heads = block.heads
                self.blocks.append(_SelfAttention(gamma, torch.cat([block.to_q.weight, block.to_k.weight,
                                                                    block.to_v.weight]).detach(),
                                                  block.to_out.weight.detach()))
            elif kind == "c":
                self.blocks.append(_CrossAttention(gamma, block.to_q.weight.detach(), block.to_k.weight.detach(),
                                                   block.to_v.weight.detach(), block.to_out.weight.detach()))
            elif kind == "f":
                first, last = block.ff[0][0], block.ff[2]
                self.blocks.append(_FeedForward(gamma, first.weight.detach(), first.bias.detach(),
                                                last.weight.detach(), last.bias.detach()))
            else:
                raise ValueError(f"unsupported x-transformers layer type {kind!r}")
        inner = self.blocks[0].qkv.shape[0] // 3
        self.head_dim = inner // self.heads
        self.rot_dim = self.inv_freq.shape[0] * 2
        self.n_self = sum(isinstance(b, _SelfAttention) for b in self.blocks)

    # ---- state ----------------------------------------------------------------------------------

    def start(self, context: torch.Tensor, context_mask: torch.Tensor, max_len: int) -> "DecodeState":
        """Cache cross-attention keys/values for a batch of encoder states and allocate the KV cache."""
        batch = context.shape[0]
        cross = []
        for block in self.blocks:
            if isinstance(block, _CrossAttention):
                cross.append((self._heads(context @ block.k.T), self._heads(context @ block.v.T)))
        shape = (batch, self.heads, max_len, self.head_dim)
        cache_k = [torch.zeros(shape, dtype=context.dtype) for _ in range(self.n_self)]
        cache_v = [torch.zeros(shape, dtype=context.dtype) for _ in range(self.n_self)]
        positions = torch.arange(max_len, dtype=self.inv_freq.dtype)
        angles = torch.repeat_interleave(positions[:, None] * self.inv_freq[None, :], 2, dim=-1)
        # Padded prompt positions become an additive -inf bias (None when nothing is padded).
        bias = None if bool(context_mask.all()) else \
            torch.zeros(context_mask.shape, dtype=context.dtype).masked_fill(~context_mask, float("-inf"))[:, None, None, :]
        return DecodeState(cross, bias, cache_k, cache_v, angles.cos(), angles.sin())

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention; for one query a plain softmax(q k^T) v, which beats the fused CPU kernel there (it is
        built for long query blocks). `mask` is boolean (True = attend) or an additive bias."""
        if q.shape[-2] > 1:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        scores = (q @ k.transpose(-1, -2)) * self.head_dim ** -0.5
        if mask is not None:
            scores = scores + mask
        return scores.softmax(dim=-1) @ v

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, _ = x.shape
        return x.view(batch, n, self.heads, self.head_dim).transpose(1, 2)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary embedding on the first rot_dim features, adjacent pairs rotated (x-transformers layout)."""
        rot, rest = x[..., :self.rot_dim], x[..., self.rot_dim:]
        pairs = rot.unflatten(-1, (-1, 2))
        rotated_half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return torch.cat((rot * cos + rotated_half * sin, rest), dim=-1)

    # ---- forward --------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, state: "DecodeState") -> torch.Tensor:
        """Logits (batch, vocab) after feeding `tokens` (batch, n) at the next n positions."""
        return self.logits(self.hidden(tokens, state))

    def logits(self, hidden: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """Output logits of final hidden states, for all ids or only the id range `rows` (the grammar
        often allows only onsets or only durations: computing 500 logits instead of 25k)."""
        return hidden @ self.to_logits[rows].T

    @torch.inference_mode()
    def hidden(self, tokens: torch.Tensor, state: "DecodeState") -> torch.Tensor:
        """Final-norm hidden state (batch, dim) of the last of `tokens` (batch, n) fed at the next n positions."""
        batch, n = tokens.shape
        start = state.length
        end = start + n
        cos, sin = state.cos[start:end], state.sin[start:end]
        h = F.embedding(tokens, self.embedding)
        self_index = cross_index = 0
        for block in self.blocks:
            x = F.layer_norm(h, (self.dim,), weight=block.norm)
            if isinstance(block, _SelfAttention):
                q, k, v = (self._heads(t) for t in (x @ block.qkv.T).chunk(3, dim=-1))
                cache_k, cache_v = state.cache_k[self_index], state.cache_v[self_index]
                cache_k[:, :, start:end] = self._rotate(k, cos, sin)
                cache_v[:, :, start:end] = v
                attn = self._attend(self._rotate(q, cos, sin), cache_k[:, :, :end], cache_v[:, :, :end],
                                    _causal(start, n))
                self_index += 1
            elif isinstance(block, _CrossAttention):
                k, v = state.cross[cross_index]
                attn = self._attend(self._heads(x @ block.q.T), k, v, state.context_bias)
                cross_index += 1
            else:
                h = h + F.linear(F.gelu(F.linear(x, block.w1, block.b1)), block.w2, block.b2)
                continue
            h = h + attn.transpose(1, 2).reshape(batch, n, -1) @ block.out.T
        state.length = end
        return F.layer_norm(h[:, -1], (self.dim,), weight=self.final_norm)


def _layer_norm_weight(norm: nn.Module) -> torch.Tensor:
    """The effective scale of an x-transformers LayerNorm (its gamma is stored minus `unit_offset`)."""
    if not isinstance(norm, XLayerNorm):
        raise ValueError(f"CachedDecoder supports x-transformers LayerNorm only, got {type(norm).__name__}")
    return (norm.gamma + float(norm.unit_offset)).detach()


def _causal(start: int, n: int) -> torch.Tensor | None:
    """Mask letting position start+i see keys 0..start+i (None for a single new token: it sees all)."""
    if n == 1:
        return None
    return torch.ones(n, start + n, dtype=torch.bool).tril(diagonal=start)


@dataclass
class DecodeState:
    """Per-batch decoding state: cross-attention K/V, the self-attention KV cache, rotary tables."""

    cross: list[tuple[torch.Tensor, torch.Tensor]]
    context_bias: torch.Tensor | None
    cache_k: list[torch.Tensor]
    cache_v: list[torch.Tensor]
    cos: torch.Tensor
    sin: torch.Tensor
    length: int = 0
