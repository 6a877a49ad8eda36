"""The one place that seeds everything, and the per-epoch seed that makes resuming exact."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed for one epoch's shuffling and augmentation: a pure function, so resuming is exact."""
    return (seed * 1_000_003 + epoch * 7919 + 1) % 2**63


def sample_seed(epoch_key: int, index: int) -> int:
    """Seed of one training sample's augmentation in the epoch whose seed is `epoch_key`."""
    return (epoch_key * 6_364_136_223_846_793_005 + (index + 1) * 1_442_695_040_888_963_407) % 2**63


def seed_epoch(seed: int, epoch: int, loader: Any = None) -> None:
    """Seed one epoch's shuffling and augmentation from (seed, epoch), the loader's generator or sampler too.

    The loader gets a new generator object: an iterator of the previous epoch that has not reached its end yet
    (a RandomSampler draws once more when it is exhausted) keeps drawing from the old one."""
    seed_everything(epoch_seed(seed, epoch))
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "set_epoch_seed"):  # utils.data.seeded.SampleSeeded: augmentation per sample
        dataset.set_epoch_seed(epoch_seed(seed, epoch))
    generator = getattr(loader, "generator", None)
    sampler = getattr(loader, "sampler", None)
    if generator is not None:
        fresh = torch.Generator(device=generator.device)
        fresh.manual_seed(epoch_seed(seed, epoch))
        loader.generator = fresh
        if getattr(sampler, "generator", None) is generator:
            sampler.generator = fresh
    if hasattr(sampler, "set_epoch"):  # DistributedSampler: same permutation on every rank
        sampler.seed = seed
        sampler.set_epoch(epoch)
