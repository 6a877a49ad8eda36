"""What a split holds, as one SHA-256: caches and run records name the data by content, not by folder.

In-memory splits hash their pixels and labels. Image files are not read: each file's path, size and
modification time (with its label, or a YOLO label file's parsed boxes) stand for it, so an image replaced,
added or removed in place changes the fingerprint in a stat per file. A copy with new modification times gets a
new fingerprint too (a cache entry re-made, never a stale one used).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.data.datasets import ImageFileDataset, TensorImageDataset
from utils.data.yolo import YoloDataset


def _files(digest: "hashlib._Hash", paths: Iterable[Path]) -> None:
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())


def content_fingerprint(dataset: Dataset) -> str | None:
    """SHA-256 (hex) of a split's samples (see the module docstring); None for a dataset of another kind."""
    digest = hashlib.sha256()
    if isinstance(dataset, TensorImageDataset):
        images = dataset.samples.images.contiguous()
        digest.update(f"{images.dtype}{tuple(images.shape)}\n".encode())
        digest.update(images.view(torch.uint8).reshape(-1).numpy() if images.numel() else b"")
    elif isinstance(dataset, ImageFileDataset):
        _files(digest, dataset.samples.paths)
    elif isinstance(dataset, YoloDataset):
        _files(digest, (image for image, _ in dataset.items))
        for boxes in dataset.labels:
            digest.update(f"{len(boxes)}\n".encode())
            digest.update(boxes.numpy().tobytes())
        return digest.hexdigest()
    else:
        return None
    digest.update(np.ascontiguousarray(dataset.samples.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()
