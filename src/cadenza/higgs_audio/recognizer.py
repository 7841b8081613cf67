"""Recognizers of a transcript's sounding tokens from audio codes, as CTC log-probabilities over the LM's text
tokens: a small GRU trained on the corpus (`CTCAligner`), or a v3 codec's own codebook-0 phoneme head
(`PhonemeHeadAligner`). `aligner.py` aligns transcripts with them (training), `takes.py` scores takes (inference).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cadenza.higgs_audio.codec.model import Codec
from cadenza.higgs_audio.text import PAUSE_SYMBOLS, TextTokenizer

UPSAMPLE = 2  # recognizer outputs per audio frame


class CTCAligner(nn.Module):
    """Codes [B, n_q, T] -> log-probabilities [B, UPSAMPLE * T, vocab] over text tokens, blank = pad id 0:
    summed code embeddings, two residual convolutions, each frame repeated UPSAMPLE times, a bidirectional GRU.
    (A transformer encoder at half the step time had not left CTC's blank plateau after 6 epochs, 86% of the
    tokens missed; this GRU left it in its second epoch.)"""

    def __init__(self, vocab_size: int, n_q: int = 8, codebook_size: int = 1024, dim: int = 192, hidden: int = 160):
        super().__init__()
        self.n_q, self.codebook_size = n_q, codebook_size
        self.embed = nn.Embedding(n_q * codebook_size, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, 5, padding=2) for _ in range(2))
        self.rnn = nn.GRU(dim, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, vocab_size)

    def forward(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(self.n_q, device=codes.device)[None, :, None] * self.codebook_size
        x = self.embed(codes.clamp(0, self.codebook_size - 1) + offsets).sum(1).transpose(1, 2)  # [B, dim, T]
        for conv in self.convs:
            x = x + F.gelu(conv(x))
        x = x.repeat_interleave(UPSAMPLE, dim=2).transpose(1, 2)
        packed = nn.utils.rnn.pack_padded_sequence(x, UPSAMPLE * lengths.cpu(), batch_first=True, enforce_sorted=False)
        x, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])
        return self.head(x).log_softmax(-1)


class PhonemeHeadAligner(nn.Module):
    """A v3 codec's codebook-0 phoneme head as an aligner over the LM's text tokens: codes [B, n_q, T] ->
    log-probabilities [B, UPSAMPLE * T, vocab]. A phoneme symbol reads its class, a pause the head's blank
    (silence), any other sounding token a uniform score; each frame is repeated UPSAMPLE times, so two tokens
    may start in one frame as with `CTCAligner`."""

    def __init__(self, codec: Codec, tokenizer: TextTokenizer):
        super().__init__()
        from cadenza.higgs_audio.codec.phonemes import BLANK, phoneme_ids

        if codec.semantic is None or codec.semantic.phoneme_head is None:
            raise ValueError("this codec has no phoneme head on codebook 0 (a v3 codec has one)")
        self.semantic = codec.semantic
        classes = []
        for token in tokenizer.vocab:
            ids = phoneme_ids(token) if len(token) == 1 else []
            classes.append(ids[0] if ids else BLANK if token in PAUSE_SYMBOLS else -1)
        classes[tokenizer.pad_id] = BLANK  # the blank of `forced_align`
        self.register_buffer("classes", torch.tensor(classes), persistent=False)

    def forward(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        quantized = self.semantic.vq.get_output_from_indices(codes[:, 0].clamp(min=0))
        log_probs = self.semantic.phoneme_log_probs(quantized)  # [B, T, n_phonemes]
        uniform = torch.full_like(log_probs[..., :1], -float(np.log(log_probs.shape[-1])))
        tokens = torch.cat([log_probs, uniform], -1)[..., self.classes]  # class -1: the uniform column
        return tokens.repeat_interleave(UPSAMPLE, dim=1)


__all__ = ["UPSAMPLE", "CTCAligner", "PhonemeHeadAligner"]
