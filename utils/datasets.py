"""Dataset registry: one YAML entry per downstream dataset (configs/datasets/<name>.yaml), read
from its real on-disk layouts (utils/layouts.py) with the shared transforms (utils/transforms.py).

    splits = load_datasets("dtd", "/data/dtd", interpolation="bicubic")
    splits.train[0]  # (float32 tensor 3 x 224 x 224, int label)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from pydantic import Field, field_validator
from torch.utils.data import Dataset
from torchvision.transforms import v2

from utils.config import StrictModel, load_config
from utils.errors import UserError
from utils.layouts import LAYOUTS, FileSamples, Layout, RawSplits, Samples, TensorSamples
from utils.registry import Registry, unknown_name_message
from utils.transforms import build_transforms

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "datasets"

__all__ = [
    "DATASETS", "LAYOUTS", "DatasetSpec", "DatasetSplits", "get_dataset_spec", "build_transforms",
    "load_datasets", "load_dataset_specs", "stratified_subset", "read_image",
]

Triple = tuple[float, float, float]


class DatasetSpec(StrictModel):
    """One dataset: class count, normalisation statistics and the layouts it can be read from."""

    name: str  # the key used in results files
    label: str  # display name
    num_classes: int | None = Field(default=None, gt=0)  # None: taken from the tree (imagefolder)
    mean: Triple
    std: Triple
    layouts: tuple[str, ...] = Field(min_length=1)  # auto-detection order: the first match wins
    native_size: int | None = Field(default=None, gt=0)  # None for natural images of varying size
    hflip: bool = True
    train_per_class: int | None = Field(default=None, gt=0)  # split-by-count datasets, synthetic
    test_per_class: int | None = Field(default=None, gt=0)  # synthetic only
    exclude_classes: tuple[str, ...] = ()  # class folders that are not classes (BACKGROUND_Google)
    class_names: tuple[str, ...] | None = None  # for formats whose files carry no names
    default_path: str | None = None  # used when load_datasets gets path=None

    @field_validator("layouts")
    @classmethod
    def _known_layouts(cls, layouts: tuple[str, ...]) -> tuple[str, ...]:
        for name in layouts:
            if name not in LAYOUTS:
                raise ValueError(unknown_name_message("dataset layout", name, LAYOUTS.names()))
        return layouts

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: Triple) -> Triple:
        if min(std) <= 0:
            raise ValueError("std values must be > 0")
        return std


def load_dataset_specs(config_dir: str | Path = CONFIG_DIR) -> Registry[DatasetSpec]:
    """Validate every <name>.yaml under config_dir into a registry (file stem must equal name)."""
    registry: Registry[DatasetSpec] = Registry("dataset")
    for path in sorted(Path(config_dir).glob("*.yaml")):
        spec = load_config(path, DatasetSpec)
        if spec.name != path.stem:
            raise UserError(f"{path}: key 'name' is {spec.name!r}; it must equal the file name {path.stem!r}")
        registry.add(spec.name, spec)
    return registry


DATASETS: Registry[DatasetSpec] = load_dataset_specs()


def get_dataset_spec(name: str) -> DatasetSpec:
    """The registry entry for `name`; an unknown name raises listing the valid ones."""
    return DATASETS.get(name)


# ---------------------------------------------------------------- torch datasets


def read_image(path: Path) -> Image.Image:
    """Decode one image as RGB; an unreadable file raises a UserError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UserError(f"{path}: cannot read image ({type(err).__name__}: {err}); "
                        "re-extract the dataset or delete the file") from None


class ImageFileDataset(Dataset):
    """Image files decoded with PIL on access."""

    def __init__(self, samples: FileSamples, transform: Callable):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(read_image(self.samples.paths[index])), int(self.samples.labels[index])


# Transforms that give the same output every call: they can run once, batched, over an in-memory split.
DETERMINISTIC_TRANSFORMS = (v2.ToImage, v2.Resize, v2.CenterCrop, v2.ToDtype, v2.Normalize)
PRECOMPUTE_BUDGET_BYTES = 512 * 2**20


def split_deterministic_prefix(transform: Callable) -> tuple[list[Callable], list[Callable]]:
    """(leading deterministic steps, the rest) of a v2.Compose; ([], [transform]) for anything else."""
    if not isinstance(transform, v2.Compose):
        return [], [transform]
    steps = list(transform.transforms)
    cut = 0
    while cut < len(steps) and isinstance(steps[cut], DETERMINISTIC_TRANSFORMS):
        cut += 1
    return steps[:cut], steps[cut:]


class TensorImageDataset(Dataset):
    """In-memory C x H x W images; grayscale is replicated to 3 channels.

    The transform's deterministic leading steps (resize, crop, scale, normalise) run once over the whole
    split, batched -- the same kernels give the same values -- so each access only pays for the random
    steps. Splits whose prepared copy would exceed PRECOMPUTE_BUDGET_BYTES keep per-sample transforms.
    """

    def __init__(self, samples: TensorSamples, transform: Callable):
        self.samples, self.transform = samples, transform
        self.prepared: torch.Tensor | None = None
        prefix, rest = split_deterministic_prefix(transform)
        if prefix:
            first = v2.Compose(prefix)(self._three_channels(samples.images[:1]))
            if first.element_size() * first.numel() * len(samples) <= PRECOMPUTE_BUDGET_BYTES:
                self.prepared = torch.cat([v2.Compose(prefix)(self._three_channels(chunk)).as_subclass(torch.Tensor)
                                           for chunk in samples.images.split(4096)])
                self.transform = v2.Compose(rest) if rest else None

    @staticmethod
    def _three_channels(images: torch.Tensor) -> torch.Tensor:
        return images.expand(-1, 3, -1, -1) if images.shape[-3] == 1 else images

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.prepared is not None:
            image = self.prepared[index]
        else:
            image = self.samples.images[index]
            if image.shape[0] == 1:
                image = image.repeat(3, 1, 1)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.samples.labels[index])


def make_dataset(samples: Samples, transform: Callable) -> Dataset:
    if isinstance(samples, FileSamples):
        return ImageFileDataset(samples, transform)
    return TensorImageDataset(samples, transform)


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


def verify_images(samples: FileSamples) -> None:
    """Decode every file upfront so a corrupt image fails now, not hours into training."""
    from tqdm import tqdm

    for path in tqdm(samples.paths, desc="verifying images", unit="img", leave=False):
        read_image(path)


def check_splits(raw: RawSplits, spec: DatasetSpec, layout: Layout, root: Path | None, *, strict: bool) -> None:
    where = root if root is not None else spec.name
    for split, samples in (("train", raw.train), ("test", raw.test)):
        if len(samples) == 0:
            raise layout.error(where, f"the {split} split is empty")
    if spec.num_classes is not None and len(raw.classes) != spec.num_classes:
        message = (f"{where}: found {len(raw.classes)} classes but dataset {spec.name!r} has "
                   f"{spec.num_classes} (layout '{layout.name}' expects {layout.expects})")
        if strict:
            raise UserError(message + "; point at the full dataset or pass strict_classes=False")
        logger.warning(message)


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
    verify: bool = False,
    strict_classes: bool = True,
) -> DatasetSplits:
    """Read dataset `name` from `path` into train/test torch datasets with the study's transforms.

    image_size None/224: ImageNet-size pipeline; an int: small-image pipeline (see build_transforms).
    augment=False gives the train split the test transform (feature extraction). max_train_samples
    takes a seeded stratified subset of train. strict_classes=False turns a class-count mismatch
    with the registry into a warning (tiny test trees, partial copies).
    """
    spec = get_dataset_spec(name)
    if path is None and spec.default_path is not None:
        path = spec.default_path
    chosen, root = resolve_layout(spec, Path(path).expanduser() if path is not None else None, layout)
    raw = chosen.read(root, spec)
    check_splits(raw, spec, chosen, root, strict=strict_classes)
    train = raw.train
    if max_train_samples is not None:
        if max_train_samples <= 0:
            raise UserError(f"max_train_samples must be positive; got {max_train_samples}")
        train = train.subset(stratified_subset(train.labels, max_train_samples, seed))
    if verify:
        for samples in (train, raw.test):
            if isinstance(samples, FileSamples):
                verify_images(samples)
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
