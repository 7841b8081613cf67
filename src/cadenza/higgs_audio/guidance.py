"""Phoneme guidance: codebook 0 sampled toward the phoneme the transcript pointer is on.

A model with a transcript pointer knows, at every frame, which transcript token it is speaking; a v3 codec's
codebook 0 was trained with a CTC phoneme head, so each of its codes has a distribution over phonemes
(`AudioTokenizer.code_phoneme_log_probs`). Guidance samples codebook 0 from the product of the two experts,

    log p(code) + weight * log P(phoneme being spoken | code),

renormalised so that the codes keep the probability mass the model gave them against EOS (guidance changes
which code is said, not when the clip ends). Like classifier guidance in image models, it leans a sampler
that drifts (a small LM free-running on its own samples) back toward what it was asked to say; weight 0 is
plain sampling. Tokens without a phoneme (stress marks, spaces) are not guided.
"""

from __future__ import annotations

import numpy as np
import torch

from cadenza.higgs_audio.codec.phonemes import phoneme_ids
from cadenza.higgs_audio.text import TextTokenizer


class PhonemeGuide:
    """Adds each row's phoneme guidance to its codebook-0 logits."""

    def __init__(self, code_log_probs: torch.Tensor, tokenizer: TextTokenizer) -> None:
        """code_log_probs (codebook_size, phonemes): log P(phoneme | code), a codec's
        `code_phoneme_log_probs`."""
        self.by_phoneme = code_log_probs.T.contiguous()  # (phonemes, codebook_size): one row gathered per frame
        self.codebook_size = code_log_probs.shape[0]
        # phoneme index (0-based, blank excluded) of each text token, -1 where it has none
        self.token_phoneme = np.array([(ids[0] - 1 if ids else -1) for ids in map(phoneme_ids, tokenizer.vocab)])

    def apply(self, logits: torch.Tensor, tokens: list[int], weights: list[float]) -> None:
        """Guide codebook-0 logits (n, V) in place (V >= codebook_size; the ids past the codes, BOS and EOS,
        are left as they are), row i toward the phoneme of text token tokens[i] (-1: none) with weights[i]
        (0: unguided)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        phonemes = np.where(tokens >= 0, self.token_phoneme[tokens.clip(min=0)], -1)
        weight = np.asarray(weights, dtype=np.float32)
        rows = np.flatnonzero((phonemes >= 0) & (weight > 0))
        if not len(rows):
            return
        index = torch.from_numpy(rows)
        codes = logits[index, :self.codebook_size]
        guided = codes + torch.from_numpy(weight[rows])[:, None] * self.by_phoneme[torch.from_numpy(phonemes[rows])]
        guided += (codes.logsumexp(-1) - guided.logsumexp(-1))[:, None]
        logits[index, :self.codebook_size] = guided


__all__ = ["PhonemeGuide"]
