"""What every dataset layout shares: the samples it returns, the `Layout` interface, the registry, helpers.

A layout recognises its tree and lists the samples. It never decodes image files (only the in-memory
formats of `memory.py` and `shapes.py` hold pixels); it returns file paths or uint8/float tensors plus
integer labels. Split conventions (which files form train and test) live in the layout, stated in `expects`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from utils.data.spec import DatasetSpec
from utils.errors import UserError
from utils.registry import Registry

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class FileSamples:
    """Image files and their integer labels; decoded lazily by the dataset."""

    paths: list[Path]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> "FileSamples":
        return FileSamples([self.paths[i] for i in indices], self.labels[np.asarray(indices, dtype=int)])


@dataclass(frozen=True)
class TensorSamples:
    """In-memory images N x C x H x W (uint8 0..255 or float32 0..1, C = 1 or 3) and labels."""

    images: torch.Tensor
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> "TensorSamples":
        idx = np.asarray(indices, dtype=int)
        return TensorSamples(self.images[torch.from_numpy(idx)], self.labels[idx])


Samples = FileSamples | TensorSamples


@dataclass(frozen=True)
class RawSplits:
    """What a layout reads: both splits and the class names (index = label)."""

    train: Samples
    test: Samples
    classes: list[str]


class Layout:
    """A tree shape: `find_root` says whether (and where) a path matches, `read` lists the samples."""

    name = ""
    expects = ""  # one line, shown in every error about this layout
    needs_path = True
    wrappers: tuple[str, ...] = ()  # sub-folders also tried: torchvision roots, archive folders

    def matches(self, root: Path) -> bool:
        raise NotImplementedError

    def find_root(self, path: Path) -> Path | None:
        """The dataset folder for `path` (itself or a known sub-folder), or None if nothing matches."""
        for candidate in (path, *(path / w for w in self.wrappers)):
            if candidate.is_dir() and self.matches(candidate):
                return candidate
        return None

    def read(self, root: Path | None, spec: DatasetSpec) -> RawSplits:
        raise NotImplementedError

    def error(self, where: Path, problem: str) -> UserError:
        return UserError(f"{where}: {problem} (layout '{self.name}' expects {self.expects})")


LAYOUTS: Registry[Layout] = Registry("dataset layout")


def register_layout(layout: Layout) -> Layout:
    LAYOUTS.add(layout.name, layout)
    return layout


# ---------------------------------------------------------------- helpers


def _visible(name: str) -> bool:
    return not name.startswith(".")


def class_dirs(folder: Path) -> list[str]:
    """Sorted class sub-folder names (as torchvision's ImageFolder sorts them), hidden ones skipped."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and _visible(e.name))


def image_files(folder: Path, layout: Layout, *, recursive: bool) -> list[Path]:
    """Sorted image files of one class folder; an empty class folder is an error."""
    if recursive:
        found = [
            Path(dirpath) / f
            for dirpath, dirnames, files in os.walk(folder, followlinks=True)
            for f in files
            if _visible(f) and f.lower().endswith(IMG_EXTENSIONS)
        ]
    else:
        found = [folder / e.name for e in os.scandir(folder)
                 if e.is_file() and _visible(e.name) and e.name.lower().endswith(IMG_EXTENSIONS)]
    if not found:
        raise layout.error(folder, f"class folder has no images ({', '.join(IMG_EXTENSIONS)})")
    return sorted(found)


def read_lines(path: Path, layout: Layout, what: str) -> list[str]:
    """Non-empty, stripped lines of a split/annotation file; a missing file is a missing split."""
    if not path.is_file():
        raise layout.error(path, f"missing {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise layout.error(path, f"{what} is not UTF-8 text") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def label_array(names: Sequence[str], classes: list[str], layout: Layout, source: Path) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise layout.error(source, f"class {unknown[0]!r} does not occur in the train split")
    return np.array([index[n] for n in names], dtype=np.int64)


def load_mat(path: Path, layout: Layout, key: str) -> Any:
    """One variable of a MATLAB file (scipy.io), squeezed; missing file/key is a UserError."""
    import scipy.io

    if not path.is_file():
        raise layout.error(path, "missing file")
    try:
        data = scipy.io.loadmat(str(path), squeeze_me=True)
    except Exception as err:  # scipy raises several unrelated types for a bad file
        raise layout.error(path, f"cannot read MATLAB file ({err})") from None
    if key not in data:
        raise layout.error(path, f"has no variable {key!r}")
    return data[key]
