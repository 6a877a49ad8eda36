"""A dataset registry entry (configs/datasets/<name>.yaml): classes, statistics, the layouts it is read from."""
from __future__ import annotations

from pydantic import Field, field_validator

from utils.config import StrictModel

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

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: Triple) -> Triple:
        if min(std) <= 0:
            raise ValueError("std values must be > 0")
        return std
