"""The dataset registry (configs/datasets/*.yaml) and `load_datasets`: a name and a path -> train/test datasets.

    splits = load_datasets("dtd", "/data/dtd", interpolation="bicubic")
    splits.train[0]  # (float32 tensor 3 x 224 x 224, int label)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset

from utils.config import load_config
from utils.data.datasets import make_dataset
from utils.data.layouts import LAYOUTS, FileSamples, Layout, RawSplits
from utils.data.spec import DatasetSpec
from utils.data.transforms import build_transforms
from utils.data.verify import verify_images
from utils.errors import UserError
from utils.paths import DATASET_DIR
from utils.registry import Registry, unknown_name_message

logger = logging.getLogger(__name__)


def load_dataset_specs(config_dir: str | Path = DATASET_DIR,
                       registry: Registry[DatasetSpec] | None = None) -> Registry[DatasetSpec]:
    """Validate every <name>.yaml under config_dir into a registry (file stem must equal name)."""
    registry = Registry("dataset") if registry is None else registry
    for path in sorted(Path(config_dir).glob("*.yaml")):
        spec = load_config(path, DatasetSpec)
        unknown = [n for n in spec.layouts if n not in LAYOUTS]
        if unknown:
            raise UserError(f"{path}: key 'layouts': " + unknown_name_message("dataset layout", unknown[0],
                                                                             LAYOUTS.names()))
        if spec.name != path.stem:
            raise UserError(f"{path}: key 'name' is {spec.name!r}; it must equal the file name {path.stem!r}")
        registry.add(spec.name, spec)
    return registry


# read on first use (utils.registry.Registry's loader): a broken dataset file fails what reads it, not every import
DATASETS: Registry[DatasetSpec] = Registry("dataset", loader=lambda: load_dataset_specs(DATASET_DIR, DATASETS))


def get_dataset_spec(name: str) -> DatasetSpec:
    """The registry entry for `name`; an unknown name raises listing the valid ones."""
    return DATASETS.get(name)


@dataclass(frozen=True)
class DatasetSplits:
    """Train/test torch datasets plus what was read; `meta` keys caches (features, runs)."""

    train: Dataset
    test: Dataset
    num_classes: int
    spec: DatasetSpec
    layout: str
    classes: list[str]
    root: Path | None
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- loading


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a deterministic subset of `size` keeping class proportions (largest remainder)."""
    labels = np.asarray(labels)
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / len(labels)
    take = np.floor(quota).astype(int)
    order = np.lexsort((classes, -(quota - take)))  # largest remainder first, ties by class id
    take[order[: size - take.sum()]] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def describe_layouts(names: Sequence[str]) -> str:
    return "; ".join(f"'{n}': {LAYOUTS.get(n).expects}" for n in names)


def resolve_layout(spec: DatasetSpec, path: Path | None, layout: str | None) -> tuple[Layout, Path | None]:
    """Pick the layout (forced or first matching) and the dataset folder it reads from."""
    if layout is not None and layout not in spec.layouts:
        raise UserError(f"dataset {spec.name!r} cannot be read with layout {layout!r}; "
                        f"its layouts: {', '.join(spec.layouts)}")
    names = [layout] if layout is not None else list(spec.layouts)
    path_checked = False
    for candidate in (LAYOUTS.get(n) for n in names):
        if not candidate.needs_path:
            return candidate, None
        if not path_checked:
            check_path(spec, path, names)
            path_checked = True
        root = candidate.find_root(path)
        if root is not None:
            return candidate, root
    raise UserError(f"{path}: matches no layout of dataset {spec.name!r}; expected {describe_layouts(names)}")


def check_path(spec: DatasetSpec, path: Path | None, names: Sequence[str]) -> None:
    if path is None:
        raise UserError(f"dataset {spec.name!r} needs a data path; expected {describe_layouts(names)}")
    if not path.is_dir():
        problem = "is not a directory" if path.exists() else "does not exist"
        raise UserError(f"{path}: data path for dataset {spec.name!r} {problem}; "
                        f"expected {describe_layouts(names)}")


def check_splits(raw: RawSplits, spec: DatasetSpec, layout: Layout, root: Path | None, *, strict: bool) -> None:
    where = root if root is not None else spec.name
    for split, samples in (("train", raw.train), ("test", raw.test)):
        if len(samples) == 0:
            raise layout.error(where, f"the {split} split is empty")
    if spec.num_classes is not None and len(raw.classes) != spec.num_classes:
        message = (f"{where}: found {len(raw.classes)} classes but dataset {spec.name!r} has "
                   f"{spec.num_classes} (layout '{layout.name}' expects {layout.expects})")
        if strict:
            raise UserError(message + "; point at the full dataset, or use --dset imagefolder, which takes the "
                                      "classes from the tree")
        logger.warning(message)
    present = set(np.unique(raw.train.labels).tolist())
    empty = [c for i, c in enumerate(raw.classes) if i not in present]
    if empty:
        raise layout.error(where, f"{len(empty)} of {len(raw.classes)} classes have no training images "
                                  f"(e.g. {empty[0]!r})")


def _layout_of(spec, path: str | Path | None, layout: str | None):
    """(the layout, its root) of the dataset at `path` (the spec's default path when None)."""
    if path is None and spec.default_path is not None:
        path = spec.default_path
    chosen, root = resolve_layout(spec, Path(path).expanduser() if path is not None else None, layout)
    if not chosen.needs_path and path is not None and path != spec.default_path:
        raise UserError(f"dataset {spec.name!r} takes no data path ({chosen.expects}); drop --dset_path {path}")
    return chosen, root


def _train_subset(train, classes: int, max_train_samples: int, seed: int):
    """A seeded stratified subset of `max_train_samples` training samples; warns when classes lose every image."""
    if max_train_samples <= 0:
        raise UserError(f"max_train_samples must be positive; got {max_train_samples}")
    train = train.subset(stratified_subset(train.labels, max_train_samples, seed))
    missing = classes - len(np.unique(np.asarray(train.labels)))
    if missing:
        logger.warning("--max_train_samples %d leaves %d of %d classes without a training image (the subset keeps "
                       "class proportions); the model cannot learn those: give at least %d", max_train_samples,
                       missing, classes, classes)
    return train


def load_datasets(
    name: str,
    path: str | Path | None,
    *,
    image_size: int | None = None,
    interpolation: str = "bilinear",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: bool = True,
    max_train_samples: int | None = None,
    seed: int = 0,
    layout: str | None = None,
    verify: bool = True,
    strict_classes: bool = True,
) -> DatasetSplits:
    """Read dataset `name` from `path` into train/test torch datasets with the study's transforms.

    image_size None/224: ImageNet-size pipeline; an int: small-image pipeline (see build_transforms).
    augment=False gives the train split the test transform (feature extraction). max_train_samples
    takes a seeded stratified subset of train. strict_classes=False turns a class-count mismatch
    with the registry into a warning (tiny test trees, partial copies).
    """
    spec = get_dataset_spec(name)
    chosen, root = _layout_of(spec, path, layout)
    raw = chosen.read(root, spec)
    check_splits(raw, spec, chosen, root, strict=strict_classes)
    train = raw.train if max_train_samples is None else _train_subset(raw.train, len(raw.classes),
                                                                        max_train_samples, seed)
    if verify:      # image files: checked now, all at once, rather than when the loader reaches them
        verify_images([p for samples in (train, raw.test) if isinstance(samples, FileSamples) for p in samples.paths],
                      root=root)
    mean = tuple(spec.mean if mean is None else mean)
    std = tuple(spec.std if std is None else std)
    common = dict(image_size=image_size, interpolation=interpolation, mean=mean, std=std,
                  hflip=spec.hflip, native_size=spec.native_size)
    test_transform = build_transforms(train=False, **common)
    train_transform = build_transforms(train=True, **common) if augment else test_transform
    meta = dict(dataset=spec.name, layout=chosen.name, root=str(root) if root else None,
                num_train=len(train), num_test=len(raw.test), num_classes=len(raw.classes),
                image_size=image_size, interpolation=interpolation, mean=list(mean), std=list(std),
                augment=augment, max_train_samples=max_train_samples, seed=seed)
    logger.info("dataset %s (layout %s, %s): %d train / %d test images, %d classes", spec.name,
                chosen.name, root, len(train), len(raw.test), len(raw.classes))
    return DatasetSplits(
        train=make_dataset(train, train_transform), test=make_dataset(raw.test, test_transform),
        num_classes=len(raw.classes), spec=spec, layout=chosen.name, classes=list(raw.classes),
        root=root, meta=meta)
