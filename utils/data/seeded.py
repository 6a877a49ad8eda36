"""Per-sample seeded augmentation: a training sample's random crop and flip depend on (seed, epoch, index) only.

Without it the random transforms draw from whichever process decodes the sample: the main process's generator
with `--workers 0`, else each worker's own (torch seeds worker w with base + w, and worker w decodes batches
w, w+W, ...), so the same seed gave other numbers on a machine with another worker count. Here every sample
seeds torch, NumPy and Python's `random` from its own key before its transform runs; in the main process torch's
and Python's generators are put back afterwards, so the training step draws the same numbers with or without it
(NumPy's is not: nothing in training draws from it, and restoring it would cost 150 us a sample).
"""
from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from utils.seed import sample_seed


class SampleSeeded(Dataset):
    """`dataset` with each `__getitem__(i)` seeded from `sample_seed(epoch_key, i)`; `set_epoch_seed` per epoch."""

    def __init__(self, dataset: Dataset, epoch_key: int = 0):
        self.dataset, self.epoch_key = dataset, int(epoch_key)

    def set_epoch_seed(self, key: int) -> None:
        """Called before an epoch's iterator starts (workers take a copy of the dataset then)."""
        self.epoch_key = int(key)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self._seeded(int(index), lambda: self.dataset[index])

    def __getitems__(self, indices: list[int]) -> list[Any]:
        """A batch: a dataset that fetches batches itself (YOLO's: per-image draws, then flips and colour jitter
        over the batch) is seeded once per batch, by its first sample (each index comes once an epoch); others
        sample by sample."""
        fetch = getattr(self.dataset, "__getitems__", None)
        if fetch is None:
            return [self[i] for i in indices]
        return self._seeded(int(indices[0]), lambda: fetch(indices))

    def _seeded(self, index: int, fetch: Callable[[], Any]) -> Any:
        seed = sample_seed(self.epoch_key, index)
        if get_worker_info() is not None:       # a worker's generators serve nothing else
            _seed_all(seed)
            return fetch()
        # NumPy's global generator is left as the sample seeded it: saving and restoring it costs 150 us a
        # sample, and nothing in training draws from it (the next epoch reseeds it anyway)
        saved = torch.get_rng_state(), random.getstate()
        try:
            _seed_all(seed)
            return fetch()
        finally:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":                   # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _seed_all(seed: int) -> None:
    torch.default_generator.manual_seed(seed)   # CPU only: CUDA's generators are not the transforms'
    np.random.seed(seed % 2**32)
    random.seed(seed)
