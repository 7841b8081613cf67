"""Data loading that survives a resume: a shuffle fixed by (seed, epoch) and a DataLoader that skips what a
checkpointed epoch already trained on. Torch only: Lightning finds these through their `state_dict`."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler

__all__ = ["EpochRandomSampler", "ResumableDataLoader"]


class EpochRandomSampler(RandomSampler):
    """A shuffle that depends only on (seed, epoch), so a resumed run replays the same order.

    A plain `shuffle=True` draws from the global RNG, whose state a checkpoint does not bring back.
    Subclassing RandomSampler lets Lightning see it as shuffled and swap in a DistributedSampler under DDP.
    """

    def __init__(self, data_source: Sized, seed: int | None = None) -> None:
        super().__init__(data_source)
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of each epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())


class _SkipFirst:
    """Batch indices without the first `n` batches: a resumed epoch skips what it already trained on.

    `n` is read when iteration starts; the loader sets it only while creating the resumed epoch's iterator
    (an iterator with persistent workers keeps this object and re-iterates it in later epochs).
    """

    def __init__(self, index_sampler: Any) -> None:
        self.index_sampler, self.n = index_sampler, 0

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.index_sampler), self.n, None)

    def __len__(self) -> int:
        return max(0, len(self.index_sampler) - self.n)


class ResumableDataLoader(DataLoader):
    """A map-style DataLoader that records its place in the epoch in Lightning checkpoints.

    Plain DataLoaders restart the interrupted epoch from its first batch on resume (Lightning warns
    "your dataloader is not resumable"); this one skips the batches already trained on, by index, without
    loading them. `shuffle=True` uses `EpochRandomSampler`, so the order itself is reproducible too.
    """

    def __init__(
        self, dataset: Any, batch_size: int | None = 1, shuffle: bool | None = None, *, seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(dataset, IterableDataset):
            raise TypeError("ResumableDataLoader needs a map-style dataset (an IterableDataset keeps its own state)")
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed
        if shuffle and kwargs.get("sampler") is None and kwargs.get("batch_sampler") is None:
            kwargs["sampler"] = EpochRandomSampler(dataset, self.seed)
            shuffle = None
        # Every new iterator draws a worker base seed; from a private generator, not the global RNG, so
        # that restarting an epoch on resume leaves the global RNG (dropout, augmentation) where it was.
        self._own_generator = kwargs.get("generator") is None
        if self._own_generator:
            kwargs["generator"] = torch.Generator()
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, **kwargs)
        self._yielded = 0  # batches handed out in the current epoch
        self._resume_skip = 0  # batches to skip at the next iteration (set by load_state_dict)
        self._skipper = _SkipFirst(super()._index_sampler)

    @property
    def _index_sampler(self) -> Any:
        return self._skipper if hasattr(self, "_skipper") else super()._index_sampler

    def __len__(self) -> int:
        return len(super()._index_sampler)  # always the full epoch, as Lightning's progress counters expect

    def __iter__(self) -> Iterator[Any]:
        skip, self._resume_skip = self._resume_skip, 0
        if self._own_generator:
            self.generator.manual_seed(self.seed + int(getattr(self.sampler, "epoch", 0)))
        self._skipper.n = skip
        try:
            iterator = super().__iter__()
        finally:
            self._skipper.n = 0
        self._yielded = skip
        for batch in iterator:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Batches of the current epoch already trained on, and the sampler's epoch."""
        return {"yielded": self._yielded, "epoch": int(getattr(self.sampler, "epoch", 0))}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the batches a checkpointed epoch had already trained on (none if it had finished)."""
        yielded = int(state.get("yielded", 0))
        self._resume_skip = yielded if yielded < len(self) else 0
        # Lightning sets the epoch only after creating the iterator; worker processes would see the old one.
        for sampler in (self.sampler, self.batch_sampler):
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(int(state.get("epoch", 0)))
