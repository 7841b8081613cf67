"""The section classifier as a labeller: per-token section probabilities of whole pieces of any length.

Used by evaluation (`cadenza music evaluate --classifier`, `classifier_eval`) and by the wake stage of
wake-sleep; it needs only the exported classifier, never the training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from cadenza.core.checkpoint import load_model
from cadenza.staria.models import N_SECTIONS, SectionClassifier, StariaConfig
from cadenza.staria.tokenizer import StariaTokenizer


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of `items` of `size` (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


class SectionLabeller:
    """Per-token section probabilities (n, 4) from a SectionClassifier, batched, in overlapping windows.

    A piece longer than the model's `max_seq_len` is cut into windows that overlap by `overlap` tokens;
    each token takes its prediction from the window in which it is farthest from a cut.
    """

    def __init__(self, model: SectionClassifier, batch_size: int = 8, overlap: int = 128,
                 device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.window = model.cfg.max_seq_len
        if not 0 <= overlap < self.window:
            raise ValueError(f"overlap must be in [0, {self.window}) (the classifier's max_seq_len), got {overlap}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.overlap, self.device = batch_size, overlap, torch.device(device)
        self.pad_id = StariaTokenizer().pad_id
        self.source: str | None = None  # the directory the classifier was loaded from

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: Any) -> "SectionLabeller":
        """Load a classifier exported by `cadenza music train classifier` (RUN_DIR/model)."""
        model, _ = load_model(directory, StariaConfig, SectionClassifier)
        labeller = cls(model, **kwargs)
        labeller.source = str(directory)
        return labeller

    def windows(self, n: int) -> list[tuple[int, int, int, int]]:
        """(start, end, keep_from, keep_to) of each window over n tokens; the kept parts tile [0, n)."""
        out, start, stride = [], 0, self.window - self.overlap
        while start < n:
            end = min(start + self.window, n)
            keep_from = start + self.overlap // 2 if start > 0 else 0
            keep_to = end - (self.overlap - self.overlap // 2) if end < n else end
            out.append((start, end, keep_from, keep_to))
            if end == n:
                break
            start += stride
        return out

    @torch.inference_mode()
    def __call__(self, pieces: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Section probabilities (n_tokens, 4) of each piece (ids without section tokens)."""
        out = [np.zeros((len(ids), N_SECTIONS), dtype=np.float32) for ids in pieces]
        jobs = [(k, *w) for k, ids in enumerate(pieces) for w in self.windows(len(ids))]
        jobs.sort(key=lambda job: job[2] - job[1])  # similar lengths share a batch: less padding
        for batch in chunks(jobs, self.batch_size):
            width = max(end - start for _, start, end, _, _ in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.bool)
            for row, (k, start, end, _, _) in enumerate(batch):
                ids[row, :end - start] = torch.as_tensor(np.asarray(pieces[k][start:end], dtype=np.int64))
                mask[row, :end - start] = True
            logits, _ = self.model(ids.to(self.device), mask.to(self.device))
            probs = logits.float().softmax(-1).cpu().numpy()
            for row, (k, start, _, keep_from, keep_to) in enumerate(batch):
                out[k][keep_from:keep_to] = probs[row, keep_from - start:keep_to - start]
        return out
