"""Building blocks of hand-written single-step decoders (Staria's and Higgs Audio's).

A decoding step at a small batch is bound by per-operation overhead and by reading the weights, not by
arithmetic, so these helpers do each job in as few tensor operations as possible:

- `PackedWeights`: weights kept transposed, (in, out), so that a step multiplies `x @ W` with W in the
  layout its product is fastest in at batch 1 (float32 contiguous: 1.5-2x faster than `F.linear`'s
  x W^T on (out, in) on AVX-512, as fast under AVX2), optionally in half precision, which halves the
  bytes read per step; a residual stream to add the product to goes in as its bias (one `addmm` instead
  of a product and an addition);
- `attend`: softmax(q k^T + bias) v through batched matrix products, which beat the fused CPU attention
  kernel for a single query (that kernel is built for long query blocks);
- `rotate_half_tables`: rotary positions as `x * cos + x[..., perm] * sin`, the sign of the rotated half
  folded into the sine table, so applying them costs one gather and one multiply-add.
"""

from __future__ import annotations

import functools
import time

import torch


class PackedWeights:
    """Projection weights kept transposed, (in, out), for `x @ W` decoding steps, all in one dtype.

    float32 weights are stored contiguous (in, out). Half-precision weights halve the bytes a step reads,
    and their products are done one of two ways:
    - `widen=False`: multiplied in float16, the weight stored (out, in) in memory and used as its transposed
      view (a plain float16 product measured 1.5x slower than the transposed one with AVX-512, 4x with AVX2);
      Staria's decoder;
    - `widen=True`: stored contiguous (in, out) and widened, right before its product, into one float32 scratch
      buffer sized for the largest weight (it stays in the L2 cache; a buffer per shape would crowd L3). The
      products stay float32, so a row's numbers do not depend on the batch it is in, and CPUs without float16
      arithmetic do not fall back to a slow kernel at batch > 1 (2-5x slower than float32 at batch 16); Higgs
      Audio's decoder, which samples audio from them.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, widen: bool = False) -> None:
        self.dtype, self.widen = dtype, widen
        self._buffer = torch.empty(0)
        self._scratch: dict[tuple[int, ...], torch.Tensor] = {}  # a float32 view of _buffer per weight shape

    def pack(self, weight: torch.Tensor) -> torch.Tensor:
        """An nn.Linear weight (out, in) as `project` takes it: detached, transposed to (in, out), in dtype."""
        weight = weight.detach().to(self.dtype)
        if self.dtype != torch.float32 and not self.widen:
            return weight.contiguous().t()
        weight = weight.t().contiguous()
        if self.dtype != torch.float32:
            self._scratch_for(weight)
        return weight

    def project(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x @ weight (+ bias) for a packed weight (in, out); the result and bias in x's dtype. bias broadcasts
        to the result (x 2-D), so it may be a residual stream to add to."""
        if x.dtype != weight.dtype:
            if not self.widen:
                out = (x.to(weight.dtype) @ weight).to(x.dtype)
                return out if bias is None else out + bias
            scratch = self._scratch.get(weight.shape)
            weight = (self._scratch_for(weight) if scratch is None else scratch).copy_(weight)
        return x @ weight if bias is None else torch.addmm(bias, x, weight)

    def _scratch_for(self, weight: torch.Tensor) -> torch.Tensor:
        """The float32 view of the shared scratch buffer a weight of this shape is widened into (grown on demand)."""
        size = weight.numel()
        if self._buffer.numel() < size:
            self._buffer, self._scratch = torch.empty(size, device=weight.device), {}
        view = self._scratch.get(weight.shape)
        if view is None:
            view = self._scratch[weight.shape] = self._buffer[:size].view(weight.shape)
        return view


@functools.lru_cache
def fastest_weight_dtype(out_features: int, in_features: int, batch: int = 1, widen: bool = False,
                         candidates: tuple[torch.dtype, ...] = (torch.float32, torch.float16)) -> torch.dtype:
    """The weight dtype whose `PackedWeights(dtype, widen).project` (conversions included) is fastest on this
    CPU for a layer of this shape, timed once per process (~10 ms). Half precision halves the bytes a step reads, but CPUs differ in how fast
    they multiply it: for a 576 x 192 layer at batch 1, one with AVX512-FP16 ran float16 2.5x slower than
    float32 (the weights fit in its cache), another ran it ~1.3x faster."""
    x = torch.randn(batch, in_features)

    def seconds(dtype: torch.dtype) -> float:
        weights = PackedWeights(dtype, widen)
        weight, project = weights.pack(torch.randn(out_features, in_features)), weights.project
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


__all__ = ["PackedWeights", "attend", "fastest_weight_dtype", "rotate_half_tables"]
