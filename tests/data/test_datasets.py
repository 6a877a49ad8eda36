"""Dataset registry: every dataset's every layout read from a tiny tree in its real on-disk layout."""
from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision.transforms import v2

from utils.data import (
    DATASETS,
    LAYOUTS,
    build_transforms,
    get_dataset_spec,
    load_dataset_specs,
    load_datasets,
    stratified_subset,
)
from utils.errors import UserError

STUDY_CLASSES = {"aircraft": 100, "birds": 500, "caltech101": 101, "caltech256": 257, "cars": 196,
                 "cifar10": 10, "cifar100": 100, "dtd": 47, "flowers": 102, "food101": 101, "pets": 37,
                 "SUN": 397}


def write_image(path: Path, size: tuple[int, int] = (10, 8), seed: int = 0, mode: str = "RGB") -> Path:
    """A tiny noise image; format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Tree:
    """A generated tree: the paths that must all be accepted, and what reading it must give."""

    paths: list[Path | None]
    classes: list[str]
    num_train: int
    num_test: int
    extra: dict = field(default_factory=dict)


BUILDERS: dict[str, Callable[[Path], Tree]] = {}


def builder(layout: str):
    def deco(fn):
        BUILDERS[layout] = fn
        return fn
    return deco


@builder("folders")
def make_folders(root: Path, test_name: str = "test") -> Tree:
    classes = ["cat", "dog", "emu"]
    for c, cls in enumerate(classes):
        for i in range(2):
            write_image(root / "train" / cls / f"{cls}_{i}.jpg", size=(12 + i, 9), seed=c * 10 + i)
        write_image(root / test_name / cls / f"{cls}_t.png", seed=c, mode="L")  # grayscale PNG
    return Tree([root], classes, 6, 3)


@builder("caltech101")
def make_caltech101(root: Path) -> Tree:
    base = root / "caltech101" / "101_ObjectCategories"
    for cls, n in (("Faces", 31), ("accordion", 32), ("BACKGROUND_Google", 3)):
        for i in range(1, n + 1):
            write_image(base / cls / f"image_{i:04d}.jpg", size=(8, 8), seed=i)
    return Tree([root, root / "caltech101", base], ["Faces", "accordion"], 60, 3)


@builder("caltech256")
def make_caltech256(root: Path) -> Tree:
    base = root / "caltech256" / "256_ObjectCategories"
    for c, (cls, n) in enumerate((("001.ak47", 61), ("257.clutter", 62)), start=1):
        for i in range(1, n + 1):
            write_image(base / cls / f"{c:03d}_{i:04d}.jpg", size=(8, 8), seed=i)
    write_image(base / "001.ak47" / "greg" / "001_9999.jpg", size=(8, 8))  # a stray sub-folder: ignored
    (base / "257.clutter" / "RENAME2").write_text("not an image")
    return Tree([root, root / "caltech256"], ["001.ak47", "257.clutter"], 120, 3)


@builder("fgvc_aircraft")
def make_aircraft(root: Path) -> Tree:
    data = root / "fgvc-aircraft-2013b" / "data"
    names = ["F/A-18", "Boeing 717"]
    train, test = [], []
    for k in range(6):
        image_id = f"{1000000 + k:07d}"
        write_image(data / "images" / f"{image_id}.jpg", seed=k)
        (test if k >= 4 else train).append(f"{image_id} {names[k % 2]}")
    write_lines(data / "images_variant_trainval.txt", train)
    write_lines(data / "images_variant_test.txt", test)
    write_lines(data / "variants.txt", names)
    return Tree([root, root / "fgvc-aircraft-2013b"], ["Boeing 717", "F/A-18"], 4, 2)


@builder("dtd")
def make_dtd(root: Path) -> Tree:
    base = root / "dtd" / "dtd"  # torchvision's root/dtd/dtd
    classes = ["banded", "zigzagged"]
    splits: dict[str, list[str]] = {"train1": [], "val1": [], "test1": []}
    for cls in classes:
        for i, split in enumerate(splits):
            write_image(base / "images" / cls / f"{cls}_{i:04d}.jpg", seed=i)
            splits[split].append(f"{cls}/{cls}_{i:04d}.jpg")
    for split, lines in splits.items():
        write_lines(base / "labels" / f"{split}.txt", lines)
    return Tree([root, root / "dtd", base], classes, 4, 2)


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int], label_key: str, **extra) -> None:
    # Python-3 view of the real Python-2 pickles: bytes keys, data N x 3072 uint8 (R, G, B planes)
    data = {b"data": images.reshape(len(images), -1), label_key.encode(): labels, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=2))


def cifar_images(n: int, seed: int) -> np.ndarray:
    images = np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    images[:, 0] = 255  # red plane full: checks the plane order survives
    return images


@builder("cifar10_python")
def make_cifar10(root: Path) -> Tree:
    base = root / "cifar-10-batches-py"
    for b in range(1, 6):
        write_cifar_batch(base / f"data_batch_{b}", cifar_images(2, b), [b % 3, (b + 1) % 3], "labels")
    write_cifar_batch(base / "test_batch", cifar_images(3, 9), [0, 1, 2], "labels")
    base.joinpath("batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane", b"cat", b"dog"]}))
    return Tree([root, base], ["airplane", "cat", "dog"], 10, 3, {"red": True})


@builder("cifar100_python")
def make_cifar100(root: Path) -> Tree:
    base = root / "cifar-100-python"
    write_cifar_batch(base / "train", cifar_images(4, 1), [0, 1, 2, 1], "fine_labels", coarse_labels=[7] * 4)
    write_cifar_batch(base / "test", cifar_images(3, 2), [2, 1, 0], "fine_labels", coarse_labels=[7] * 3)
    base.joinpath("meta").write_bytes(pickle.dumps({"fine_label_names": ["apple", "bee", "can"],
                                                    "coarse_label_names": ["x"]}))
    return Tree([root, base], ["apple", "bee", "can"], 4, 3, {"red": True})


@builder("food101")
def make_food101(root: Path) -> Tree:
    base = root / "food-101"
    classes = ["apple_pie", "sushi"]
    train, test = [], []
    for c, cls in enumerate(classes):
        for i in range(3):
            write_image(base / "images" / cls / f"{100 + i}.jpg", seed=c + i)
            (test if i == 2 else train).append(f"{cls}/{100 + i}")
    write_lines(base / "meta" / "train.txt", train)
    write_lines(base / "meta" / "test.txt", test)
    write_lines(base / "meta" / "classes.txt", classes)
    return Tree([root, base], classes, 4, 2)


@builder("flowers102")
def make_flowers102(root: Path) -> Tree:
    base = root / "flowers-102"
    for i in range(1, 10):
        write_image(base / "jpg" / f"image_{i:05d}.jpg", seed=i)
    # the official files hold 1 x N arrays with 1-based labels and image ids
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([[1, 1, 1, 2, 2, 2, 3, 3, 3]])})
    scipy.io.savemat(base / "setid.mat", {"trnid": np.array([[1, 4, 7]]), "valid": np.array([[2, 5, 8]]),
                                          "tstid": np.array([[3, 6, 9]])})
    return Tree([root, base], ["1", "2", "3"], 6, 3)


@builder("oxford_pets")
def make_pets(root: Path) -> Tree:
    base = root / "oxford-iiit-pet"
    rows = {"trainval": [], "test": []}
    for cid, breed in ((1, "Abyssinian"), (2, "american_bulldog")):
        for i in range(1, 4):
            write_image(base / "images" / f"{breed}_{i}.jpg", seed=i)
            rows["test" if i == 3 else "trainval"].append(f"{breed}_{i} {cid} {cid} 1")
    write_lines(base / "annotations" / "trainval.txt", rows["trainval"])
    write_lines(base / "annotations" / "test.txt", rows["test"])
    return Tree([root, base], ["Abyssinian", "american_bulldog"], 4, 2)


def cars_annotations(path: Path, records: list[tuple[int, str]]) -> None:
    dtype = [(k, "O") for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    annos = np.zeros((1, len(records)), dtype=dtype)
    for k, (cls, fname) in enumerate(records):
        annos[0, k] = (1, 1, 5, 5, cls, fname)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"annotations": annos})


@builder("stanford_cars")
def make_stanford_cars(root: Path) -> Tree:
    base = root / "stanford_cars"
    classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
    (base / "devkit").mkdir(parents=True)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([classes], dtype=object)})
    train = [(1 + k % 2, f"{k + 1:05d}.jpg") for k in range(4)]
    test = [(2, "00001.jpg"), (1, "00002.jpg")]
    for _, fname in train:
        write_image(base / "cars_train" / fname)
    for _, fname in test:
        write_image(base / "cars_test" / fname)
    cars_annotations(base / "devkit" / "cars_train_annos.mat", train)
    cars_annotations(base / "cars_test_annos_withlabels.mat", test)
    return Tree([root, base], classes, 4, 2)


@builder("sun397")
def make_sun397(root: Path) -> Tree:
    base = root / "SUN397"
    write_lines(base / "ClassName.txt", ["/a/abbey", "/b/bakery/shop"])
    train, test = [], []
    for rel in ("a/abbey", "b/bakery/shop"):
        for i in range(3):
            write_image(base / rel / f"sun_{i}.jpg", seed=i)
            (test if i == 2 else train).append(f"/{rel}/sun_{i}.jpg")
    write_lines(base / "Partitions" / "Training_01.txt", train)
    write_lines(base / "Partitions" / "Testing_01.txt", test)
    return Tree([root, base], ["abbey", "bakery/shop"], 4, 2)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


@builder("mnist_idx")
def make_mnist_idx(root: Path) -> Tree:
    base = root / "FashionMNIST" / "raw"  # torchvision's root/FashionMNIST/raw
    rng = np.random.default_rng(0)
    write_idx(base / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (6, 28, 28)))
    write_idx(base / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 0, 1, 2]))
    write_idx(base / "t10k-images-idx3-ubyte", rng.integers(0, 256, (3, 28, 28)))  # unpacked: also read
    write_idx(base / "t10k-labels-idx1-ubyte", np.array([2, 1, 0]))
    return Tree([root, base], ["0", "1", "2"], 6, 3)


@builder("sklearn_digits")
def make_digits(root: Path) -> Tree:
    return Tree([None], [str(d) for d in range(10)], 1347, 450)


@builder("synthetic")
def make_synthetic_tree(root: Path) -> Tree:
    return Tree([None], [f"pattern{c}" for c in range(4)], 64, 32)


@builder("generated_shapes")
def make_shapes_tree(root: Path) -> Tree:
    from utils.data.layouts.shapes import CLASSES
    return Tree([None], list(CLASSES), 1600, 800)


PAIRS = [(name, layout) for name in DATASETS.names() for layout in get_dataset_spec(name).layouts]


# ---------------------------------------------------------------- registry


def test_registry_has_the_study_datasets_with_their_class_counts():
    assert {n: get_dataset_spec(n).num_classes for n in STUDY_CLASSES} == STUDY_CLASSES
    assert {"imagefolder", "fashion_mnist", "digits", "synthetic"} <= set(DATASETS.names())
    assert get_dataset_spec("digits").hflip is False
    assert get_dataset_spec("cifar10").native_size == 32 and get_dataset_spec("fashion_mnist").native_size == 28
    assert get_dataset_spec("caltech101").train_per_class == 30
    assert get_dataset_spec("caltech256").train_per_class == 60
    assert "BACKGROUND_Google" in get_dataset_spec("caltech101").exclude_classes


def test_every_layout_is_used_and_has_a_tree_builder():
    used = {layout for _, layout in PAIRS}
    assert used == set(LAYOUTS.names()) == set(BUILDERS)


def test_unknown_dataset_name_suggests_the_closest():
    with pytest.raises(UserError, match=r"unknown dataset 'cifar11' \(did you mean 'cifar10'\?\)"):
        get_dataset_spec("cifar11")


@pytest.mark.parametrize("yaml_text, message", [
    ("name: x\nlabel: X\nmean: [0, 0, 0]\nstd: [1, 1, 1]\nlayouts: [folders]\ncolour: red\n", "colour"),
    ("name: x\nlabel: X\nmean: [0, 0, 0]\nstd: [1, 1, 1]\nlayouts: [foldr]\n", "did you mean 'folders'"),
    ("name: x\nlabel: X\nmean: [0, 0]\nstd: [1, 1, 1]\nlayouts: [folders]\n", "mean"),
    ("name: x\nlabel: X\nmean: [0, 0, 0]\nstd: [1, 0, 1]\nlayouts: [folders]\n", "std"),
    ("name: y\nlabel: X\nmean: [0, 0, 0]\nstd: [1, 1, 1]\nlayouts: [folders]\n", "must equal the file name"),
])
def test_bad_dataset_yaml_names_file_and_key(tmp_path, yaml_text, message):
    (tmp_path / "x.yaml").write_text(yaml_text)
    with pytest.raises(UserError, match=message) as err:
        load_dataset_specs(tmp_path)
    assert "x.yaml" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- every dataset x layout


@pytest.mark.parametrize("name, layout", PAIRS, ids=[f"{n}-{lay}" for n, lay in PAIRS])
def test_each_layout_reads_its_real_tree(tmp_path, name, layout):
    tree = BUILDERS[layout](tmp_path)
    for path in tree.paths:
        splits = load_datasets(name, path, image_size=16, strict_classes=False)
        assert splits.layout == layout, path
        assert (len(splits.train), len(splits.test)) == (tree.num_train, tree.num_test)
        assert splits.classes == tree.classes and splits.num_classes == len(tree.classes)
        for dataset in (splits.train, splits.test):
            assert set(dataset.samples.labels.tolist()) == set(range(len(tree.classes)))
            image, label = dataset[0]
            assert image.shape == (3, 16, 16) and image.dtype == torch.float32
            assert type(image) is torch.Tensor and type(label) is int
        # forcing the layout gives the same result
        forced = load_datasets(name, path, image_size=16, strict_classes=False, layout=layout)
        assert forced.meta == splits.meta


def test_caltech_train_is_first_files_by_name_and_background_is_dropped(tmp_path):
    make_caltech101(tmp_path)
    splits = load_datasets("caltech101", tmp_path, strict_classes=False)
    train_names = [p.name for p, y in zip(splits.train.samples.paths, splits.train.samples.labels) if y == 1]
    test_names = [p.name for p, y in zip(splits.test.samples.paths, splits.test.samples.labels) if y == 1]
    assert train_names == [f"image_{i:04d}.jpg" for i in range(1, 31)]
    assert test_names == ["image_0031.jpg", "image_0032.jpg"]
    assert not any("BACKGROUND" in str(p) for p in splits.train.samples.paths + splits.test.samples.paths)


def test_aircraft_variants_with_slashes_and_spaces(tmp_path):
    make_aircraft(tmp_path)
    splits = load_datasets("aircraft", tmp_path, strict_classes=False)
    by_name = {p.stem: splits.classes[y] for p, y in zip(splits.train.samples.paths, splits.train.samples.labels)}
    assert by_name["1000000"] == "F/A-18" and by_name["1000001"] == "Boeing 717"


def test_dtd_train_is_train1_plus_val1(tmp_path):
    make_dtd(tmp_path)
    names = sorted(p.name for p in load_datasets("dtd", tmp_path, strict_classes=False).train.samples.paths)
    assert names == ["banded_0000.jpg", "banded_0001.jpg", "zigzagged_0000.jpg", "zigzagged_0001.jpg"]


def test_flowers_train_is_trnid_plus_valid(tmp_path):
    make_flowers102(tmp_path)
    splits = load_datasets("flowers", tmp_path, strict_classes=False)
    assert [p.name for p in splits.train.samples.paths] == [f"image_{i:05d}.jpg" for i in (1, 4, 7, 2, 5, 8)]
    assert splits.train.samples.labels.tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("builder_fn, name", [(make_cifar10, "cifar10"), (make_cifar100, "cifar100")])
def test_cifar_pixels_and_fine_labels(tmp_path, builder_fn, name):
    builder_fn(tmp_path)
    splits = load_datasets(name, tmp_path, image_size=32, augment=False, strict_classes=False)
    spec = splits.spec
    image, label = splits.train[0]
    # native size = image_size: the test transform only normalises, so the red plane stays 1.0
    assert torch.allclose(image[0], torch.full((32, 32), (1 - spec.mean[0]) / spec.std[0]))
    if name == "cifar100":
        assert splits.train.samples.labels.tolist() == [0, 1, 2, 1]  # fine labels, not coarse


def test_folders_accepts_valid_and_val_as_test(tmp_path):
    for test_name in ("valid", "val"):
        root = tmp_path / test_name
        make_folders(root, test_name=test_name)
        splits = load_datasets("imagefolder", root)
        assert len(splits.test) == 3 and splits.num_classes == 3


# ---------------------------------------------------------------- transforms


def test_imagenet_size_transforms_give_224(tmp_path):
    write_image(tmp_path / "a.jpg", size=(300, 200))
    image = Image.open(tmp_path / "a.jpg").convert("RGB")
    for train in (True, False):
        for interpolation in ("bilinear", "bicubic"):
            tf = build_transforms(train=train, image_size=None, interpolation=interpolation,
                                  mean=(0.5,) * 3, std=(0.5,) * 3)
            out = tf(image)
            assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    test_tf = build_transforms(train=False, image_size=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    kinds = [type(t) for t in test_tf.transforms]
    assert v2.Resize in kinds and v2.CenterCrop in kinds and v2.RandomResizedCrop not in kinds


def test_small_transforms_resize_only_when_native_size_differs():
    x = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    same = build_transforms(train=False, image_size=28, mean=(0,) * 3, std=(1,) * 3, native_size=28)
    assert torch.allclose(same(x), x.float() / 255)
    up = build_transforms(train=True, image_size=32, mean=(0,) * 3, std=(1,) * 3, native_size=28)
    assert up(x).shape == (3, 32, 32)
    kinds = [type(t) for t in up.transforms]
    assert v2.RandomCrop in kinds and v2.RandomHorizontalFlip in kinds
    pad = next(t for t in up.transforms if isinstance(t, v2.RandomCrop)).padding
    assert list(pad) == [4, 4, 4, 4]
    no_flip = build_transforms(train=True, image_size=8, mean=(0,) * 3, std=(1,) * 3, hflip=False, native_size=8)
    assert v2.RandomHorizontalFlip not in [type(t) for t in no_flip.transforms]


def test_natural_images_at_small_size_are_square(tmp_path):
    make_folders(tmp_path)
    splits = load_datasets("imagefolder", tmp_path, image_size=32)
    assert splits.train[0][0].shape == (3, 32, 32) and splits.test[0][0].shape == (3, 32, 32)


def test_augment_false_uses_the_test_transform_and_mean_std_override(tmp_path):
    make_folders(tmp_path)
    splits = load_datasets("imagefolder", tmp_path, augment=False, mean=(0, 0, 0), std=(1, 1, 1))
    a, b = splits.train[0][0], splits.train[0][0]
    assert torch.equal(a, b) and a.shape == (3, 224, 224)
    assert 0 <= a.min() and a.max() <= 1
    assert splits.meta["augment"] is False and splits.meta["mean"] == [0, 0, 0]


def test_unknown_interpolation_is_a_user_error():
    with pytest.raises(UserError, match="unknown interpolation 'nearest'"):
        build_transforms(train=True, image_size=None, interpolation="nearest", mean=(0,) * 3, std=(1,) * 3)


# ---------------------------------------------------------------- in-memory datasets


def test_real_fashion_mnist_files():
    splits = load_datasets("fashion_mnist", None, image_size=28, augment=False)
    assert (len(splits.train), len(splits.test)) == (60000, 10000)
    assert np.bincount(splits.train.samples.labels).tolist() == [6000] * 10
    assert np.bincount(splits.test.samples.labels).tolist() == [1000] * 10
    assert splits.classes[0] == "T-shirt/top" and splits.root == Path("/usr/share/datasets/fashion-mnist")
    image, label = splits.test[0]
    assert image.shape == (3, 28, 28) and torch.equal(image[0], image[2])  # grayscale replicated
    assert label == 9  # the first Fashion-MNIST test image is an ankle boot


def test_digits_fixed_stratified_split(tmp_path):
    a = load_datasets("digits", None, image_size=8, augment=False)
    b = load_datasets("digits", None, image_size=8, augment=False)
    assert (len(a.train), len(a.test)) == (1347, 450)
    assert torch.equal(a.train.samples.images, b.train.samples.images)
    test_counts = np.bincount(a.test.samples.labels)
    totals = test_counts + np.bincount(a.train.samples.labels)
    assert np.all(np.abs(test_counts - 0.25 * totals) <= 1)  # stratified: 25% of each class
    assert float(a.train.samples.images.max()) == 1.0 and a.train[0][0].shape == (3, 8, 8)


def test_synthetic_is_deterministic_and_classes_differ():
    a, b = load_datasets("synthetic", None, augment=False), load_datasets("synthetic", None, augment=False)
    assert torch.equal(a.train.samples.images, b.train.samples.images)
    assert torch.equal(a.test[5][0], b.test[5][0])
    images, labels = a.train.samples.images.float(), torch.from_numpy(a.train.samples.labels)
    means = torch.stack([images[labels == c].mean(0) for c in range(4)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(1e9).min() > 100


def test_max_train_samples_is_stratified_and_seeded():
    full = load_datasets("synthetic", None)
    a = load_datasets("synthetic", None, max_train_samples=8, seed=1)
    b = load_datasets("synthetic", None, max_train_samples=8, seed=1)
    c = load_datasets("synthetic", None, max_train_samples=8, seed=2)
    assert np.bincount(a.train.samples.labels).tolist() == [2, 2, 2, 2]
    assert torch.equal(a.train.samples.images, b.train.samples.images)
    assert not torch.equal(a.train.samples.images, c.train.samples.images)
    assert len(a.test) == len(full.test) == 32
    assert len(load_datasets("synthetic", None, max_train_samples=1000).train) == 64


def test_stratified_subset_keeps_proportions():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_subset(labels, 10, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 2] and np.all(np.diff(idx) > 0)
    assert len(stratified_subset(labels, 7, seed=3)) == 7


def test_datasets_batch_through_a_dataloader(tmp_path):
    make_folders(tmp_path)
    splits = load_datasets("imagefolder", tmp_path, image_size=16)
    pickle.dumps(splits.train)  # DataLoader workers need it picklable
    images, labels = next(iter(torch.utils.data.DataLoader(splits.train, batch_size=4)))
    assert images.shape == (4, 3, 16, 16) and labels.dtype == torch.int64


# ---------------------------------------------------------------- errors


def one_line_error(call, *fragments: str) -> str:
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_wrong_path(tmp_path):
    one_line_error(lambda: load_datasets("dtd", tmp_path / "nope"),
                   str(tmp_path / "nope"), "does not exist", "dtd/labels/train1.txt")
    (tmp_path / "file").write_text("x")
    one_line_error(lambda: load_datasets("dtd", tmp_path / "file"), "is not a directory")


def test_tree_matching_no_layout_lists_each_layout(tmp_path):
    one_line_error(lambda: load_datasets("cars", tmp_path), str(tmp_path), "matches no layout",
                   "'folders': train/<class>", "'stanford_cars': stanford_cars/cars_train/")


def test_missing_path_and_forced_foreign_layout(tmp_path):
    one_line_error(lambda: load_datasets("cifar10", None), "needs a data path", "cifar-10-batches-py")
    make_folders(tmp_path)
    one_line_error(lambda: load_datasets("cifar10", tmp_path, layout="dtd"),
                   "cannot be read with layout 'dtd'", "cifar10_python, folders")
    one_line_error(lambda: load_datasets("dtd", tmp_path, layout="dtd"), "matches no layout")


def test_missing_split(tmp_path):
    write_image(tmp_path / "train" / "a" / "x.jpg")
    one_line_error(lambda: load_datasets("imagefolder", tmp_path), "no test split", "layout 'folders'")
    make_dtd(tmp_path / "d")
    (tmp_path / "d" / "dtd" / "dtd" / "labels" / "test1.txt").unlink()
    one_line_error(lambda: load_datasets("dtd", tmp_path / "d", strict_classes=False),
                   "test1.txt: missing test split file", "layout 'dtd'")
    (tmp_path / "d" / "dtd" / "dtd" / "labels" / "test1.txt").write_text("\n")
    one_line_error(lambda: load_datasets("dtd", tmp_path / "d", strict_classes=False), "the test split is empty")


def test_empty_class_folder_and_class_mismatch(tmp_path):
    make_folders(tmp_path)
    (tmp_path / "train" / "fox").mkdir()
    one_line_error(lambda: load_datasets("imagefolder", tmp_path), "class folders differ")
    (tmp_path / "test" / "fox").mkdir()
    one_line_error(lambda: load_datasets("imagefolder", tmp_path),
                   str(tmp_path / "train" / "fox"), "class folder has no images")


def test_too_few_images_for_split_by_count(tmp_path):
    base = tmp_path / "101_ObjectCategories"
    for i in range(30):
        write_image(base / "ant" / f"image_{i:04d}.jpg", size=(8, 8))
    one_line_error(lambda: load_datasets("caltech101", tmp_path, strict_classes=False),
                   "30 images; needs more than train_per_class=30")


def test_class_count_differs_from_registry(tmp_path, caplog):
    make_folders(tmp_path)
    one_line_error(lambda: load_datasets("birds", tmp_path),
                   "found 3 classes but dataset 'birds' has 500", "use --dset imagefolder")
    assert load_datasets("birds", tmp_path, strict_classes=False).num_classes == 3
    assert "found 3 classes" in caplog.text


def test_corrupt_image_named_on_read_and_by_verify(tmp_path):
    make_folders(tmp_path)
    bad = tmp_path / "train" / "cat" / "cat_0.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    splits = load_datasets("imagefolder", tmp_path, verify=False)  # unverified: loading does not decode
    one_line_error(lambda: splits.train[0], str(bad), "cannot read image")
    one_line_error(lambda: load_datasets("imagefolder", tmp_path, verify=True), str(bad))
    # a truncated JPEG fails too, when decoded
    good = tmp_path / "train" / "dog" / "dog_0.jpg"
    write_image(good, size=(64, 64))
    good.write_bytes(good.read_bytes()[:200])
    bad.unlink()
    one_line_error(lambda: load_datasets("imagefolder", tmp_path, verify=True), str(good))


def test_corrupt_binary_files_name_the_file(tmp_path):
    make_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(b"\x80\x02garbage")
    one_line_error(lambda: load_datasets("cifar10", tmp_path, strict_classes=False), str(batch), "cannot unpickle")
    make_mnist_idx(tmp_path / "m")
    idx = tmp_path / "m" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    idx.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (6).to_bytes(4, "big")))
    one_line_error(lambda: load_datasets("fashion_mnist", tmp_path / "m", strict_classes=False),
                   str(idx), "cannot read idx file")
    make_flowers102(tmp_path / "f")
    setid = tmp_path / "f" / "flowers-102" / "setid.mat"
    setid.write_bytes(b"MATLAB garbage")
    one_line_error(lambda: load_datasets("flowers", tmp_path / "f", strict_classes=False),
                   str(setid), "cannot read MATLAB file")


def test_bad_split_file_lines_name_the_file(tmp_path):
    make_aircraft(tmp_path)
    split = tmp_path / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt"
    write_lines(split, ["1000004 Concorde"])
    one_line_error(lambda: load_datasets("aircraft", tmp_path, strict_classes=False),
                   str(split), "'Concorde' does not occur in the train split")


@pytest.mark.parametrize("name, augment", [("digits", True), ("fashion_mnist", False), ("synthetic", True)])
def test_precomputed_in_memory_transforms_equal_per_sample_ones(name, augment, monkeypatch):
    import utils.data.datasets as datasets_module

    fast = load_datasets(name, None, image_size=12, augment=augment, max_train_samples=64)
    assert fast.train.prepared is not None and fast.test.prepared is not None
    monkeypatch.setattr(datasets_module, "PRECOMPUTE_BUDGET_BYTES", 0)
    slow = load_datasets(name, None, image_size=12, augment=augment, max_train_samples=64)
    assert slow.train.prepared is None
    for split in ("train", "test"):
        torch.manual_seed(0)
        a = [getattr(fast, split)[i] for i in range(20)]
        torch.manual_seed(0)
        b = [getattr(slow, split)[i] for i in range(20)]
        assert all(torch.equal(x, y) and lx == ly for (x, lx), (y, ly) in zip(a, b)), split


def test_a_data_path_for_a_dataset_that_takes_none_is_refused(tmp_path):
    one_line_error(lambda: load_datasets("digits", tmp_path), "takes no data path", "drop --dset_path")


def test_bad_image_files_are_all_reported_before_training(tmp_path):
    make_folders(tmp_path)
    (tmp_path / "train" / "cat" / "cat_0.jpg").write_bytes(b"")
    (tmp_path / "train" / "dog" / "dog_0.jpg").write_text("just text")
    write_image(tmp_path / "train" / "emu" / "emu_0.jpg", size=(64, 64))
    tail = tmp_path / "train" / "emu" / "emu_0.jpg"
    tail.write_bytes(tail.read_bytes()[:-40])                      # truncated: no end-of-image marker
    write_image(tmp_path / "test" / "cat" / "tiny.png", size=(1, 1))
    message = one_line_error(lambda: load_datasets("imagefolder", tmp_path), "4 of 10 image files cannot be used")
    for fragment in ("empty file", "not a readable image", "truncated JPEG"):
        assert fragment in message or "and 1 more" in message


def test_a_split_file_entry_whose_image_is_missing_is_reported_before_training(tmp_path):
    """Missing files have no (size, mtime): they must never count as known-good in the verification cache."""
    make_dtd(tmp_path)
    labels = tmp_path / "dtd" / "dtd" / "labels" / "train1.txt"
    labels.write_text(labels.read_text() + "banded/banded_gone.jpg\n")
    for _ in range(2):                                  # the second time through the cache as well
        one_line_error(lambda: load_datasets("dtd", tmp_path, strict_classes=False),
                       "1 of 7 image files cannot be used", "banded_gone.jpg (missing)")


def test_image_checks_are_cached_by_size_and_time(tmp_path, monkeypatch):
    import utils.data.verify as verify

    make_folders(tmp_path)
    load_datasets("imagefolder", tmp_path)
    calls = []
    monkeypatch.setattr(verify, "inspect", lambda p: calls.append(p) or (None, [20, 20]))
    load_datasets("imagefolder", tmp_path)
    assert calls == [], "a second run checks nothing that did not change"
    write_image(tmp_path / "train" / "cat" / "cat_9.jpg", size=(20, 20))
    load_datasets("imagefolder", tmp_path)
    assert calls == [tmp_path / "train" / "cat" / "cat_9.jpg"]


def test_a_class_without_training_images_is_refused():
    from utils.data.layouts import FileSamples, RawSplits
    from utils.data.loading import check_splits

    raw = RawSplits(FileSamples([Path("a"), Path("b")], np.array([0, 0])),
                    FileSamples([Path("c"), Path("d")], np.array([0, 1])), ["ant", "bee"])
    one_line_error(lambda: check_splits(raw, get_dataset_spec("imagefolder"), LAYOUTS.get("folders"), Path("/d"),
                                        strict=True), "1 of 2 classes have no training images (e.g. 'bee')")


def test_batched_crop_and_flip_give_exactly_what_the_per_sample_steps_can_give():
    """Each image of a batched draw equals the per-sample pipeline's output for one (top, left, flip) choice."""
    from torchvision.transforms.v2 import functional as F

    data = load_datasets("synthetic", None, image_size=12, augment=True, max_train_samples=64)
    train = data.train
    assert train.batched is not None
    steps = train.transform.transforms                   # RandomCrop(pad), flip, ToDtype, Normalize, ToPureTensor
    assert [type(t) for t in steps[:2]] == [v2.RandomCrop, v2.RandomHorizontalFlip]
    crop, tail = steps[0], v2.Compose(steps[2:])
    pad = crop.padding[0]
    torch.manual_seed(0)
    batch = train.__getitems__(list(range(32)))
    seen_flips, seen_offsets = set(), set()
    for i, (image, label) in enumerate(batch):
        assert label == int(data.train.samples.labels[i])
        padded = F.pad(train.prepared[i], [pad] * 4)
        matches = []
        for top in range(2 * pad + 1):
            for left in range(2 * pad + 1):
                cut = F.crop(padded, top, left, 12, 12)
                matches += [(top, left, flip) for flip, c in ((0, cut), (1, F.horizontal_flip(cut)))
                            if torch.equal(tail(c), image)]
        assert matches, f"image {i} is not an output the per-sample steps can give"
        seen_flips |= {m[2] for m in matches}
        seen_offsets |= {m[:2] for m in matches}
    assert seen_flips == {0, 1} and len(seen_offsets) > 5
    torch.manual_seed(0)
    again = train.__getitems__(list(range(32)))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batch, again))


def test_the_loader_takes_batched_augmentation_and_stays_seeded():
    from torch.utils.data import DataLoader

    data = load_datasets("digits", None, image_size=12, augment=True, max_train_samples=64)
    assert data.train.batched is not None              # float images, no flip: the batched path too

    def epoch():
        torch.manual_seed(3)
        loader = DataLoader(data.train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1))
        return [x for x, _ in loader]

    first, second = epoch(), epoch()
    assert all(torch.equal(a, b) for a, b in zip(first, second)) and first[0].shape == (16, 3, 12, 12)
