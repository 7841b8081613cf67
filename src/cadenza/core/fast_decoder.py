"""Building blocks of hand-written single-step decoders (Staria's and Higgs Audio's).

A decoding step at a small batch is bound by per-operation overhead and by reading the weights, not by
arithmetic, so these helpers do each job in as few tensor operations as possible:

- `pack` and `project`: a weight kept transposed, (in, out), so that a step multiplies `x @ W` with W in
  the layout its product is fastest in at batch 1 (float32 contiguous: 1.5-2x faster than `F.linear`'s
  x W^T on (out, in) on AVX-512, as fast under AVX2), in the weights' dtype, so half-precision weights
  halve the bytes read per step; a residual stream to add the product to goes in as its bias (one
  `addmm` instead of a product and an addition);
- `attend`: softmax(q k^T + bias) v through batched matrix products, which beat the fused CPU attention
  kernel for a single query (that kernel is built for long query blocks);
- `rotate_half_tables`: rotary positions as `x * cos + x[..., perm] * sin`, the sign of the rotated half
  folded into the sine table, so applying them costs one gather and one multiply-add.
"""

from __future__ import annotations

import functools
import time

import torch


def pack(weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An nn.Linear weight (out, in) as `project` takes it: transposed to (in, out), in dtype, laid out for the
    faster product at batch 1: float32 contiguous, float16 still (out, in) in memory (a plain float16
    product measured 1.5x slower than the transposed one with AVX-512, 4x with AVX2)."""
    weight = weight.detach().to(dtype)
    return weight.t().contiguous() if dtype == torch.float32 else weight.contiguous().t()


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight (+ bias) for a `pack`ed weight (in, out), multiplied in the weight's dtype; the result and
    bias in x's dtype. bias broadcasts to the result (x 2-D), so it may be a residual stream to add to."""
    if x.dtype == weight.dtype:
        return x @ weight if bias is None else torch.addmm(bias, x, weight)
    out = (x.to(weight.dtype) @ weight).to(x.dtype)
    return out if bias is None else out + bias


@functools.lru_cache
def fastest_weight_dtype(out_features: int, in_features: int, batch: int = 1,
                         candidates: tuple[torch.dtype, ...] = (torch.float32, torch.float16)) -> torch.dtype:
    """The weight dtype whose `project` (conversions included) is fastest on this CPU for a layer of this shape,
    timed once per process (~10 ms). Half precision halves the bytes a step reads, but CPUs differ in how fast
    they multiply it: for a 576 x 192 layer at batch 1, one with AVX512-FP16 ran float16 2.5x slower than
    float32 (the weights fit in its cache), another ran it ~1.3x faster."""
    x = torch.randn(batch, in_features)

    def seconds(dtype: torch.dtype) -> float:
        weight = pack(torch.randn(out_features, in_features), dtype)
        for _ in range(5):
            project(x, weight)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(20):
                project(x, weight)
            best = min(best, time.perf_counter() - start)
        return best

    return min(candidates, key=seconds)


def attend(q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T + bias) v over a batch of (batch * heads): q (N, n, d) pre-scaled, k_t (N, d, T)
    (keys given transposed), v (N, T, d), bias None or additive, broadcastable to (N, n, T)."""
    scores = torch.bmm(q, k_t) if bias is None else torch.baddbmm(bias, q, k_t)
    return torch.bmm(scores.softmax(dim=-1), v)


def rotate_half_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cos, signed sin, perm) such that `x * cos + x[..., perm] * signed_sin` equals the Llama/GPT-NeoX
    rotary `x * cos + rotate_half(x) * sin`, where rotate_half(x) = cat(-x[d/2:], x[:d/2])."""
    half = cos.shape[-1] // 2
    perm = torch.cat([torch.arange(half, 2 * half), torch.arange(half)]).to(cos.device)
    sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(sin)
    return cos, sin * sign, perm


__all__ = ["attend", "fastest_weight_dtype", "pack", "project", "rotate_half_tables"]
