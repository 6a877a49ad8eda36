"""Features of a frozen backbone (global-average-pooled, eval mode) and their on-disk cache.

A cache entry is a directory `<cache_root>/<dataset>/<checkpoint stem>/<split>-<key>/` holding
`features.npy` (float32, N x D), `labels.npy` (int64, N) and `meta.json`. `<key>` hashes everything the
features depend on: the checkpoint's content hash and flavour, the layer, the backend, the dataset split
(name, layout, root, size, subset) and the transform. An entry is built in a hidden temporary directory
and renamed into place only when complete, so a killed extraction never leaves one that looks valid.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm  # not tqdm.auto: in a notebook without ipywidgets it warns at import

from utils.cli import LOG_EVERY_S, bars_on
from utils.io import honour_umask
from utils.linear.backends import BatchFn

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LAYER = "forward_features"  # the global-average-pooled backbone output, the classifier's input


@dataclass(frozen=True)
class FeatureSet:
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64
    meta: dict[str, Any]
    path: Path | None = None  # the cache entry, if any
    reused: bool = False  # read from the cache rather than extracted now


# ---------------------------------------------------------------- extraction


def extract_into(run: BatchFn, dataset: Dataset, features: np.ndarray, labels: np.ndarray, *, batch_size: int,
                 workers: int, desc: str, progress: bool = True, generator: torch.Generator | None = None) -> float:
    """Fill `features`/`labels` (preallocated, possibly memory-mapped) in dataset order; returns images/s."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, generator=generator,
                        pin_memory=torch.cuda.is_available())
    start, done = time.perf_counter(), 0
    logged = start
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=not bars_on(progress), dynamic_ncols=True) as bar:
        for images, targets in loader:
            out = run(images)
            n = len(out)
            features[done:done + n] = out
            labels[done:done + n] = np.asarray(targets)
            done += n
            bar.update(n)
            if progress and bar.disable and time.perf_counter() - logged >= LOG_EVERY_S:  # off a terminal
                logged = time.perf_counter()
                log.info("%s: %d/%d images", desc, done, len(dataset))
    assert done == len(dataset), (done, len(dataset))
    rate = done / max(time.perf_counter() - start, 1e-9)
    log.info("%s: %d images, %.1f images/s", desc, done, rate)
    return rate


def extract_features(run: BatchFn, dataset: Dataset, *, dim: int, batch_size: int = 64, workers: int = 0,
                     desc: str = "features", progress: bool = True, seed: int | None = None) -> FeatureSet:
    """Extract in memory, no cache (e.g. freshly augmented images every epoch)."""
    features = np.empty((len(dataset), dim), dtype=np.float32)
    labels = np.empty(len(dataset), dtype=np.int64)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    rate = extract_into(run, dataset, features, labels, batch_size=batch_size, workers=workers, desc=desc,
                        progress=progress, generator=gen)
    return FeatureSet(features, labels, {"count": len(labels), "dim": dim, "images_per_s": rate})


# ---------------------------------------------------------------- the cache


def cache_key(description: dict[str, Any]) -> str:
    """Content key of a cache entry: SHA-256 of the canonical JSON description."""
    text = json.dumps({"format_version": FORMAT_VERSION, **description}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def entry_dir(cache_root: Path, description: dict[str, Any]) -> Path:
    ckpt = description.get("checkpoint") or {}
    stem = Path(str(ckpt.get("path") or "model")).stem or "model"
    return (Path(cache_root) / str(description.get("dataset", {}).get("name", "dataset")) / stem
            / f"{description.get('split', 'split')}-{cache_key(description)[:16]}")


def read_entry(path: Path, key: str) -> FeatureSet | None:
    """The entry at `path` when it is complete and matches `key`, else None (and why, in the log)."""
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("key") != key:
            log.warning("%s: cache key differs (hash prefix collision?); re-extracting", path)
            return None
        features = np.load(path / "features.npy")
        labels = np.load(path / "labels.npy")
        expected = (int(meta["count"]), int(meta["dim"]))
    except (OSError, ValueError, EOFError, KeyError, TypeError, UnicodeDecodeError) as err:
        log.warning("%s: unreadable cache entry (%s: %s); re-extracting", path, type(err).__name__, err)
        return None
    if features.shape != expected or labels.shape != expected[:1]:
        log.warning("%s: cache entry shapes disagree with meta.json; re-extracting", path)
        return None
    problem = content_problem(features, labels, num_classes=(meta.get("dataset") or {}).get("num_classes"))
    if problem:
        log.warning("%s: %s; re-extracting", path, problem)
        return None
    return FeatureSet(features, labels, meta, path, reused=True)


def content_problem(features: np.ndarray, labels: np.ndarray, *, num_classes: Any) -> str | None:
    """What makes a cache entry's arrays unusable (labels that are no class, non-finite features), or None."""
    if not np.issubdtype(labels.dtype, np.integer):
        return f"labels.npy holds {labels.dtype}, not class indices"
    if isinstance(num_classes, int) and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        return f"labels.npy holds labels {labels.min()}..{labels.max()}, outside the {num_classes} classes 0.." \
               f"{num_classes - 1}"
    if not np.isfinite(features).all():
        return "features.npy holds NaN or infinite values"
    return None


def remove_dead_temporaries(parent: Path, prefix: str) -> None:
    """Delete temporary directories left by killed extractions (their process is gone)."""
    for tmp in parent.glob(f".{prefix}.*.tmp"):
        try:
            pid = int(tmp.name.split(".")[-3])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def cached_features(make_backend: Callable[[], BatchFn], dataset: Dataset, *, cache_root: str | Path,
                    description: dict[str, Any], dim: int, batch_size: int = 64, workers: int = 0,
                    progress: bool = True) -> FeatureSet:
    """Read the cache entry `description` keys, or extract the features and write it atomically.

    `description` must name everything the features depend on (see `describe_split`); `make_backend`
    is only called on a cache miss (so an ONNX export happens only when needed).
    """
    key = cache_key(description)
    path = entry_dir(Path(cache_root), description)
    found = read_entry(path, key)
    if found is not None:
        log.info("reusing cached features %s (%d x %d)", path, found.meta["count"], found.meta["dim"])
        return found
    if path.exists():  # only complete entries are ever renamed into place; this one is stale or corrupt
        log.warning("%s: not a valid entry for this key; replacing it", path)
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
    try:
        features = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float32,
                                             shape=(len(dataset), dim))
        labels = np.lib.format.open_memmap(tmp / "labels.npy", mode="w+", dtype=np.int64, shape=(len(dataset),))
        desc = f"features {description.get('dataset', {}).get('name', '')}/{description.get('split', '')}"
        rate = extract_into(make_backend(), dataset, features, labels, batch_size=batch_size, workers=workers,
                            desc=desc, progress=progress)
        features.flush()
        labels.flush()
        del features, labels
        meta = {**description, "key": key, "layer": description.get("layer", LAYER), "count": len(dataset),
                "dim": dim, "images_per_s": rate, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        honour_umask(tmp, directory=True)
        try:
            os.rename(tmp, path)  # atomic: the entry appears complete or not at all
        except OSError:
            if read_entry(path, key) is None:  # not a concurrent writer finishing first
                raise
            log.info("%s was written concurrently; using that entry", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    entry = read_entry(path, key)
    assert entry is not None, path
    log.info("cached features in %s", path)
    return FeatureSet(entry.features, entry.labels, entry.meta, path, reused=False)


def describe_split(*, checkpoint: dict[str, Any], dataset_meta: dict[str, Any], split: str, dataset: Dataset,
                   backend: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cache description of one split: checkpoint, dataset split, transform, layer, backend."""
    subset = None
    if split == "train" and dataset_meta.get("max_train_samples") is not None:
        subset = {"max_train_samples": dataset_meta["max_train_samples"], "seed": dataset_meta.get("seed")}
    transform = getattr(dataset, "transform", None)
    return {
        "checkpoint": checkpoint,
        "dataset": {"name": dataset_meta.get("dataset"), "layout": dataset_meta.get("layout"),
                    "root": dataset_meta.get("root"), "num_classes": dataset_meta.get("num_classes"),
                    "count": len(dataset), "subset": subset},
        "split": split,
        "transform": {"image_size": dataset_meta.get("image_size"), "interpolation": dataset_meta.get("interpolation"),
                      "mean": dataset_meta.get("mean"), "std": dataset_meta.get("std"), "augment": False,
                      "pipeline": repr(transform)},
        "layer": LAYER,
        "backend": backend,
        **(extra or {}),
    }
