"""Best of several takes: say a request more than once and keep the take that best says its transcript.

A small LM sampled at temperature 0.7 says one sentence well in one take and mumbles it in the next: at speech_v3
step 3,100, on 24 held-out joe sentences, single takes had 54-66% WER while the best of 8 (chosen by Whisper,
an oracle) had 26%. `GenerationSettings.best_of` decodes that many takes of a request in one batch (they
share the prompt, so the prefill and the voice's prefix are computed once) and keeps the one a recognizer reads
as the transcript most easily: the CTC negative log-likelihood of the transcript's sounding tokens, per frame
of the take, under the audio tokenizer's codebook-0 phoneme head (`recognizer.PhonemeHeadAligner`). The
recognizer is the project's own, trained on the training corpus; Whisper, which the evaluation measures
with, plays no part. Only codes are scored, so only the chosen take pays for the codec's decode.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cadenza.higgs_audio.codec.model import Codec
from cadenza.higgs_audio.recognizer import UPSAMPLE, PhonemeHeadAligner
from cadenza.higgs_audio.text import TextTokenizer

# Take k > 0 of a seeded request samples with seed + k * TAKE_SEED_STRIDE (take 0 keeps the request's seed, so
# best_of 1 is the request as it was); a long text's chunks use seed, seed + 1, ..., far below the stride.
TAKE_SEED_STRIDE = 1_000_003


class TakeScorer:
    """How hard it is to read a take as its transcript: lower is better."""

    def __init__(self, codec: Codec, tokenizer: TextTokenizer) -> None:
        """ValueError for a codec without a codebook-0 phoneme head (before v3)."""
        self.recognizer = PhonemeHeadAligner(codec, tokenizer).eval()
        self.blank = tokenizer.pad_id

    @torch.inference_mode()
    def __call__(self, codes: np.ndarray, reading: list[int]) -> float:
        """CTC negative log-likelihood of `reading` (the transcript's sounding token ids) per frame of `codes`
        (n_q, T); inf for a take with no frames or too few to say them."""
        frames = codes.shape[1]
        if not frames or not reading:
            return float("inf")
        codes = torch.from_numpy(codes.astype(np.int64))[None]
        log_probs = self.recognizer(codes, torch.tensor([frames]))[0]
        loss = F.ctc_loss(log_probs[:, None], torch.tensor([reading]), torch.tensor([UPSAMPLE * frames]),
                          torch.tensor([len(reading)]), blank=self.blank, reduction="sum")
        return float(loss) / frames


__all__ = ["TAKE_SEED_STRIDE", "TakeScorer"]
