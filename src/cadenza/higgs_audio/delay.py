"""The delay pattern over codebooks: build it for training, constrain it in generation, revert it for the codec.

Codebook k of an audio clip is shifted right by k positions, so one decode step (one "delayed column")
predicts codebook 0 of frame t, codebook 1 of frame t - 1, ... : coarse codebooks are fixed before the
finer ones of the same frame are predicted. For n_q = 3 and T = 2 frames (B = BOS, E = EOS):

    column   0  1  2  3  4  5
    k = 0    B  a0 a1 E  E  E
    k = 1    B  B  b0 b1 E  E
    k = 2    B  B  B  c0 c1 E

Codebook k holds BOS at columns 0..k, frame t at column t + 1 + k and EOS from column T + 1 + k on;
column 0 is all BOS and column T + n_q is all EOS, so the pattern has T + n_q + 1 columns.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch


def build_delay_pattern(codes: torch.LongTensor, bos_id: int, eos_id: int) -> torch.LongTensor:
    """Delay codes [n_q, T] into [n_q, T + n_q + 1]: row k = [BOS] * (k + 1) + codes[k] + [EOS] * (n_q - k)."""
    n_q, T = codes.shape
    delayed = codes.new_full((n_q, T + n_q + 1), eos_id)
    for k in range(n_q):
        delayed[k, :k + 1] = bos_id
        delayed[k, k + 1:k + 1 + T] = codes[k]
    return delayed


def revert_delay_pattern(delayed: torch.LongTensor, codebook_size: int | None = None) -> torch.LongTensor:
    """Undo build_delay_pattern: [n_q, L] -> [n_q, L - n_q - 1]; clip to [0, codebook_size - 1] if given."""
    n_q, L = delayed.shape
    T = L - n_q - 1
    if T < 0:
        raise ValueError(f"a delayed stream of {n_q} codebooks needs at least {n_q + 1} columns, got {L}")
    codes = torch.stack([delayed[k, k + 1:k + 1 + T] for k in range(n_q)])
    return codes.clamp(0, codebook_size - 1) if codebook_size is not None else codes


class DelayReverter:
    """Reverts a delayed stream column by column, for streaming decode.

    Original frame t is complete once delayed column t + n_q is pushed (column 0 being the all-BOS
    column). By default it is returned one column later, by the push of column t + n_q + 1: the reverter
    does not read values, so only a following column shows that frame t is not the all-EOS frame that
    closes the stream (column T + n_q, the last). Like revert_delay_pattern, it thus treats the last
    complete frame of any stream as the closing one, and push outputs alone concatenate to
    revert_delay_pattern's output.

    With `eager=True` frame t is returned by the push of column t + n_q itself, one decode step sooner. A
    caller that knows which column is a stream's last (a generation engine does) gets the same frames by
    not pushing that column: it completes only the closing frame, or, in a stream cut off early, the frame
    revert_delay_pattern drops.
    """

    def __init__(self, n_q: int, eager: bool = False) -> None:
        self.n_q, self.eager = n_q, eager
        self._window: deque[torch.Tensor] = deque(maxlen=n_q)  # the last n_q columns pushed
        self._pushed = 0

    def push(self, frame: torch.LongTensor) -> torch.LongTensor:
        """Take delayed column [n_q]; return the original frames [n_q, k] (k = 0 or 1) it releases."""
        if self.eager:
            self._window.append(frame)
            self._pushed += 1
            return self._diagonal() if self._pushed >= self.n_q + 1 else self._empty(frame)
        ready = self._pushed >= self.n_q + 1  # the window holds columns t + 1 .. t + n_q of frame t >= 0
        released = self._diagonal() if ready else self._empty(frame)
        self._window.append(frame)
        self._pushed += 1
        return released

    def flush(self) -> torch.LongTensor:
        """End the stream and reset; the frames [n_q, 0] left are none, the held one being the closing frame."""
        device = self._window[-1].device if self._window else None
        self._window.clear()
        self._pushed = 0
        return torch.empty((self.n_q, 0), dtype=torch.long, device=device)

    def _diagonal(self) -> torch.LongTensor:
        """Frame [n_q, 1] of the window's columns: codebook k from the k-th oldest."""
        return torch.stack(list(self._window), dim=1).diagonal()[:, None]

    def _empty(self, like: torch.Tensor) -> torch.LongTensor:
        return like.new_empty((self.n_q, 0))


NO_EOS = 1 << 40  # eos column of a stream whose codebook 0 has not ended


def delay_constraints(columns: np.ndarray, eos_columns: np.ndarray, n_q: int) -> tuple[np.ndarray, np.ndarray]:
    """Which codebooks must be BOS and which must be EOS at delayed column `columns[b]` of each stream b:
    two (streams, n_q) boolean masks.

    Codebook k is BOS at columns <= k (the left fill). Once codebook 0 has sampled EOS at column
    `eos_columns[b]` (= T + 1; NO_EOS before), codebook k is EOS from column eos_column + k on: the
    staircase, which ends the stream after column eos_column + n_q - 1. Everywhere else a codebook samples
    a real code, except that codebook 0 may sample EOS, from column 2 on, to end the audio.
    """
    k = np.arange(n_q)
    columns, eos_columns = np.asarray(columns)[:, None], np.asarray(eos_columns)[:, None]
    return k >= columns, k + eos_columns <= columns
