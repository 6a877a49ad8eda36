"""The one place that seeds everything, and the per-epoch seed that makes resuming exact."""
from __future__ import annotations

import random

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
