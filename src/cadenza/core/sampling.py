"""Token sampling shared by music and speech: temperature, top-k, top-p, min-p, repetition-aware, seeding.

All functions take a batch of logits `(batch, vocab)` and work in place on a copy, so one request's
settings never leak into another's. Masked-out entries are `-inf`.
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


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Logits scaled by temperature with everything outside top-k / top-p / min-p set to -inf."""
    logits = logits.float() / max(cfg.temperature, 1e-6)
    if cfg.top_k is not None and 0 < cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.min_p is not None and cfg.min_p > 0:
        probs = logits.softmax(dim=-1)
        threshold = cfg.min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p (the best token always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= cfg.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of `logits` (batch, vocab) -> (batch,)."""
    if cfg.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, cfg).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


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
