"""Sampling the next text token or delayed audio column for all rows of a decode batch at once.

Each request of a batch keeps its own settings, its own seeded random stream and its own repetition
window, yet one step samples every row and codebook with a few batched tensor operations instead of a
Python loop over rows and codebooks (which took a third of a batch-16 step):

- each row's uniforms come from its own torch.Generator (2 per codebook per step: the pick and a
  possible repetition-aware resample, drawn whether used or not), so a seeded request gets the same
  uniforms, and thus the same picks, alone or in any batch;
- temperature, top-k, top-p and inverse-CDF sampling run on all (row, codebook) pairs together
  (`core.sampling.sample_from_uniforms`), then repetition-aware sampling (VALL-E 2's RAS) resamples the
  pairs whose pick fills its codebook's recent window too often (`core.sampling.repetition_aware_resample`);
- the delay pattern's rules (`delay.delay_constraints`) are applied to all rows together: BOS only as
  the left fill, EOS only in codebook 0 (not before the first frame) and then the staircase in the others.
"""

from __future__ import annotations

import numpy as np
import torch

from cadenza.core.sampling import repetition_aware_resample, sample_from_uniforms
from cadenza.higgs_audio.delay import NO_EOS, delay_constraints


def _setting(values: list, dtype):
    """One value when every row has the same (the common case: fewer tensor operations), else a tensor."""
    if all(v == values[0] for v in values):
        return values[0]
    return torch.tensor(values, dtype=dtype)


class BatchSampler:
    """Per-row sampling state of a decode batch: settings, RAS windows, random streams, delayed columns.

    The per-row bookkeeping of the delay pattern and the repetition windows is numpy on (rows, n_q)
    integers: at these sizes a numpy call costs a fraction of a torch one.
    """

    def __init__(self, settings: list, generators: list[torch.Generator | None], n_q: int, bos_id: int,
                 eos_id: int) -> None:
        """settings: per row, objects with temperature, top_k, top_p, ras_win_len, ras_win_max_num_repeat."""
        batch = len(settings)
        self.generators, self.n_q, self.bos, self.eos = generators, n_q, bos_id, eos_id
        self.temperature = _setting([float(s.temperature) for s in settings], torch.float32)
        self.top_k = _setting([int(s.top_k or 0) for s in settings], torch.long)
        self.top_p = _setting([1.0 if s.top_p is None else float(s.top_p) for s in settings], torch.float32)
        self.top_k = None if isinstance(self.top_k, int) and self.top_k == 0 else self.top_k
        self.top_p = None if isinstance(self.top_p, float) and self.top_p >= 1.0 else self.top_p
        windows = np.array([max(int(s.ras_win_len), 0) for s in settings])
        width = max(int(windows.max()), 1)
        # Row b's repetition window is the last windows[b] of `width` slots of its history; -1 never matches.
        self.history = np.full((batch, n_q, width), -1, dtype=np.int64)
        self.in_window = None if (windows == width).all() else (np.arange(width) >= width - windows[:, None])[:, None]
        self.max_repeats = np.array([s.ras_win_max_num_repeat if w > 0 else np.iinfo(np.int64).max
                                     for s, w in zip(settings, windows)], dtype=np.int64)
        self.column = np.zeros(batch, dtype=np.int64)  # index of each row's next delayed column
        self.eos_column = np.full(batch, NO_EOS, dtype=np.int64)
        self._uniforms = torch.empty(batch, 2 * n_q)

    def _draw(self, rows: list[int], per_row: int) -> torch.Tensor:
        """(len(rows), per_row) uniforms, each row's from its own generator."""
        out = self._uniforms[:len(rows), :per_row]
        for j, i in enumerate(rows):
            torch.rand(per_row, generator=self.generators[i], out=out[j])
        return out

    def _settings(self, index, repeat: int) -> tuple:
        """(temperature, top_k, top_p) of the rows at `index`, each repeated `repeat` times per row."""
        def pick(value):
            if not isinstance(value, torch.Tensor):
                return value
            value = value if isinstance(index, slice) else value[torch.from_numpy(index)]
            return value.repeat_interleave(repeat) if repeat > 1 else value
        return pick(self.temperature), pick(self.top_k), pick(self.top_p)

    def text_tokens(self, rows: list[int], logits: torch.Tensor) -> torch.Tensor:
        """The next text token (n,) of each of `rows` from its logits (n, V)."""
        temperature, top_k, top_p = self._settings(np.asarray(rows), 1)
        return sample_from_uniforms(logits, self._draw(rows, 1)[:, 0], temperature, top_k, top_p)

    def audio_columns(self, rows: list[int], logits: torch.Tensor, every_row: bool) -> tuple[torch.Tensor, list]:
        """The next delayed column (n, n_q) of each of `rows` from its audio logits (n, n_q, V) (modified in
        place), and per row (ended, stopped): codebook 0 just sampled EOS / the staircase is complete.

        A row's first column (column 0) is all BOS. every_row: `rows` are all the batch's rows, in order.
        """
        n, n_q, vocab = logits.shape
        index = slice(None) if every_row else np.asarray(rows)
        column, eos_column = self.column[index], self.eos_column[index]
        masked = logits.numpy()  # the same memory: numpy writes cost less than torch indexing
        masked[..., self.bos] = -np.inf  # BOS only as fill, forced below
        masked[:, 1:, self.eos] = -np.inf  # codebooks > 0 end only on the staircase, forced below
        masked[column <= 1, 0, self.eos] = -np.inf  # at least one frame
        uniforms = self._draw(rows, 2 * n_q).view(n, 2, n_q)
        flat = logits.view(n * n_q, vocab)
        picked = sample_from_uniforms(flat, uniforms[:, 0].reshape(-1), *self._settings(index, n_q))
        history = self.history[index]
        if self.in_window is not None:
            history = np.where(self.in_window[index], history, -1)
        picked = repetition_aware_resample(flat, picked, torch.from_numpy(history.reshape(n * n_q, -1)),
                                           torch.from_numpy(np.repeat(self.max_repeats[index], n_q)),
                                           uniforms[:, 1].reshape(-1)).numpy().reshape(n, n_q)
        ended = (eos_column == NO_EOS) & (picked[:, 0] == self.eos) & (column >= 1)
        eos_column = np.where(ended, column, eos_column)
        force_bos, force_eos = delay_constraints(column, eos_column, n_q)
        picked = np.where(force_bos, self.bos, np.where(force_eos, self.eos, picked))
        stopped = column >= eos_column + n_q - 1
        if every_row:
            self.history[..., :-1] = self.history[..., 1:]
            self.history[..., -1] = picked
        else:
            self.history[index] = np.concatenate([self.history[index][..., 1:], picked[..., None]], axis=-1)
        self.column[index] = column + 1
        self.eos_column[index] = eos_column
        return torch.from_numpy(picked), np.stack([ended, stopped], axis=1).tolist()


__all__ = ["BatchSampler"]
