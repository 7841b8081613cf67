"""Token sampling shared by music and speech: temperature, top-k, top-p, min-p, repetition-aware, seeding.

All functions take a batch of logits `(batch, vocab)` and never modify it, so one request's settings never
leak into another's. Masked-out entries are `-inf`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingConfig:
    """How to pick the next token. temperature 0 means greedy."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None


def make_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator | None:
    """A torch.Generator seeded for reproducible sampling (None: use the global RNG)."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def sample(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of `logits` (batch, vocab) -> (batch,), after temperature, top-k, min-p and
    top-p (in that order). Top-p samples in sorted order, so no scatter back to vocabulary order is needed."""
    if cfg.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k is not None and 0 < cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.min_p is not None and cfg.min_p > 0:
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < cfg.min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))
    if cfg.top_p is None or cfg.top_p >= 1.0:
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(dim=-1)
    # Drop a token when the tokens before it already reach top_p (the best token always stays).
    probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= cfg.top_p, 0.0)
    return order.gather(-1, torch.multinomial(probs, 1, generator=generator)).squeeze(-1)


def repetition_aware_sample(logits: torch.Tensor, history: torch.Tensor, cfg: SamplingConfig,
                            window: int, max_repeats: int,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample with cfg; where the pick already occurs >= max_repeats times in the last `window` tokens of
    `history` (batch, n), resample from the unfiltered distribution instead (VALL-E 2's RAS)."""
    picked = sample(logits, cfg, generator)
    if window <= 0 or history.shape[-1] == 0:
        return picked
    recent = history[:, -window:]
    repeats = (recent == picked[:, None]).sum(dim=-1)
    stuck = repeats >= max_repeats
    if stuck.any():
        raw = torch.multinomial(logits[stuck].float().softmax(dim=-1), 1, generator=generator).squeeze(-1)
        picked = picked.clone()
        picked[stuck] = raw
    return picked
