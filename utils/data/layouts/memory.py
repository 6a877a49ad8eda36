"""In-memory layouts: CIFAR python pickles, idx (.gz) files, scikit-learn's digits, generated stripes.

They decode everything at load (the files are small) and return uint8/float tensors plus labels.
"""
from __future__ import annotations

import colorsys
import gzip
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.data.layouts.base import Layout, RawSplits, TensorSamples, register_layout
from utils.errors import UserError


def load_pickle(path: Path, layout: Layout) -> dict[str, Any]:
    """A CIFAR batch (Python 2 pickle); keys normalised to str."""
    if not path.is_file():
        raise layout.error(path, "missing batch file")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    except Exception as err:  # a truncated or foreign file raises many types
        raise layout.error(path, f"cannot unpickle ({type(err).__name__}: {err})") from None
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


class CifarLayout(Layout):
    """CIFAR-10/100 'python version' pickles: data N x 3072 uint8 (R, G, B planes of 32 x 32)."""

    def __init__(self, name: str, folder: str, *, train: tuple[str, ...], test: str, meta: str,
                 label_key: str, names_key: str):
        self.name, self.wrappers = name, (folder,)
        self.train, self.test, self.meta, self.label_key, self.names_key = train, test, meta, label_key, names_key
        self.expects = f"{folder}/ with {', '.join(train)}, {test} and {meta} (python pickles)"

    def matches(self, root):
        return (root / self.meta).is_file()

    def read(self, root, spec):
        meta = load_pickle(root / self.meta, self)
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(self.names_key, [])]
        splits = []
        for files in (self.train, (self.test,)):
            images, labels = [], []
            for name in files:
                batch = load_pickle(root / name, self)
                if "data" not in batch or self.label_key not in batch:
                    raise self.error(root / name, f"batch lacks 'data' or {self.label_key!r}")
                images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels += list(batch[self.label_key])
            splits.append(TensorSamples(torch.from_numpy(np.concatenate(images)),
                                        np.array(labels, dtype=np.int64)))
        if not classes:
            classes = [str(i) for i in range(int(splits[0].labels.max()) + 1)]
        return RawSplits(splits[0], splits[1], classes)


register_layout(CifarLayout(
    "cifar10_python", "cifar-10-batches-py", train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test="test_batch", meta="batches.meta", label_key="labels", names_key="label_names"))
register_layout(CifarLayout(
    "cifar100_python", "cifar-100-python", train=("train",), test="test", meta="meta",
    label_key="fine_labels", names_key="fine_label_names"))


def read_idx(path: Path, layout: Layout) -> np.ndarray:
    """An idx file (MNIST format: magic 0x0000 08 <ndim>, big-endian dims, uint8 data), .gz or not."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        if raw[:3] != b"\x00\x00\x08":
            raise ValueError("bad magic number; not a uint8 idx file")
        ndim = raw[3]
        shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(shape)):
            raise ValueError(f"{data.size} values for shape {shape}; file truncated?")
    except (OSError, EOFError, ValueError, gzip.BadGzipFile) as err:
        raise layout.error(path, f"cannot read idx file ({err})") from None
    return data.reshape(shape)


class IdxLayout(Layout):
    name = "mnist_idx"
    wrappers = ("FashionMNIST/raw", "raw")
    STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    expects = ("train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
               "t10k-labels-idx1-ubyte.gz (or unpacked without .gz)")

    def _file(self, root: Path, stem: str) -> Path:
        gz = root / f"{stem}.gz"
        return gz if gz.is_file() or not (root / stem).is_file() else root / stem

    def matches(self, root):
        return self._file(root, self.STEMS["train"][0]).is_file()

    def read(self, root, spec):
        splits = []
        for split, (images_stem, labels_stem) in self.STEMS.items():
            paths = [self._file(root, s) for s in (images_stem, labels_stem)]
            for p in paths:
                if not p.is_file():
                    raise self.error(p, f"missing {split} file")
            images, labels = (read_idx(p, self) for p in paths)
            if images.ndim != 3 or len(images) != len(labels):
                raise self.error(paths[0], f"{images.shape} images for {len(labels)} labels")
            splits.append(TensorSamples(torch.from_numpy(images.copy()).unsqueeze(1), labels.astype(np.int64)))
        num = int(splits[0].labels.max()) + 1
        names = spec.class_names
        classes = list(names) if names and len(names) == num else [str(i) for i in range(num)]
        return RawSplits(splits[0], splits[1], classes)


register_layout(IdxLayout())


DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


class DigitsLayout(Layout):
    name = "sklearn_digits"
    needs_path = False
    expects = (f"no files: scikit-learn's bundled load_digits (8x8, values 0..16 scaled to 0..1); a fixed "
               f"stratified split, {DIGITS_TEST_FRACTION:.0%} test, random_state={DIGITS_SPLIT_SEED}")

    def read(self, root, spec):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
        train_idx, test_idx = train_test_split(
            np.arange(len(images)), test_size=DIGITS_TEST_FRACTION, stratify=digits.target,
            random_state=DIGITS_SPLIT_SEED)
        splits = [TensorSamples(images[torch.from_numpy(np.sort(i))], digits.target[np.sort(i)].astype(np.int64))
                  for i in (train_idx, test_idx)]
        return RawSplits(splits[0], splits[1], [str(c) for c in digits.target_names])


register_layout(DigitsLayout())


SYNTHETIC_SEED = 0


def make_synthetic(*, num_classes: int, size: int, train_per_class: int, test_per_class: int,
                   seed: int = SYNTHETIC_SEED) -> RawSplits:
    """Stripes in one hue and orientation per class, random phase + noise per image (uint8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")

    def one_split(per_class: int) -> TensorSamples:
        images = np.empty((num_classes * per_class, 3, size, size), dtype=np.uint8)
        for c in range(num_classes):
            colour = np.array(colorsys.hsv_to_rgb(c / num_classes, 0.8, 0.9))[:, None, None]
            angle, freq = np.pi * c / num_classes, 2 + c % 3
            for k in range(per_class):
                wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle))
                                          + rng.uniform(0, 2 * np.pi))
                img = colour * (0.6 + 0.4 * wave) + rng.normal(0, 0.05, (3, size, size))
                images[c * per_class + k] = np.clip(img * 255, 0, 255).astype(np.uint8)
        return TensorSamples(torch.from_numpy(images), np.repeat(np.arange(num_classes), per_class))

    train = one_split(train_per_class)
    return RawSplits(train, one_split(test_per_class), [f"pattern{c}" for c in range(num_classes)])


class SyntheticLayout(Layout):
    name = "synthetic"
    needs_path = False
    expects = (f"no files: num_classes x train_per_class/test_per_class coloured stripe images of "
               f"native_size pixels, generated from seed {SYNTHETIC_SEED}")

    def read(self, root, spec):
        if None in (spec.num_classes, spec.native_size, spec.train_per_class, spec.test_per_class):
            raise UserError(f"dataset {spec.name!r}: layout 'synthetic' needs num_classes, native_size, "
                            "train_per_class and test_per_class in its YAML")
        return make_synthetic(num_classes=spec.num_classes, size=spec.native_size,
                              train_per_class=spec.train_per_class, test_per_class=spec.test_per_class)


register_layout(SyntheticLayout())
