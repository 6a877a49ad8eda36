"""Layouts of image files on disk: class folders, Caltech, and the list-file formats of the study's datasets."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.data.layouts.base import (
    FileSamples,
    Layout,
    RawSplits,
    class_dirs,
    image_files,
    label_array,
    load_mat,
    read_lines,
    register_layout,
)
from utils.errors import UserError

# ---------------------------------------------------------------- image-file layouts


class FoldersLayout(Layout):
    name = "folders"
    expects = "train/<class>/<image> and test/<class>/<image> folders (valid/ or val/ also accepted as test)"
    TEST_NAMES = ("test", "valid", "val")

    def matches(self, root: Path) -> bool:
        return (root / "train").is_dir()

    def read(self, root, spec):
        test_dir = next((root / n for n in self.TEST_NAMES if (root / n).is_dir()), None)
        if test_dir is None:
            raise self.error(root, "found train/ but no test split (test/, valid/ or val/)")
        classes = class_dirs(root / "train")
        if not classes:
            raise self.error(root / "train", "no class folders")
        test_classes = class_dirs(test_dir)
        if test_classes != classes:
            diff = sorted(set(classes) ^ set(test_classes))
            raise self.error(test_dir, f"class folders differ from train/ (e.g. {diff[0]!r})")
        train, test = (self._samples(root / "train", classes), self._samples(test_dir, classes))
        return RawSplits(train, test, classes)

    def _samples(self, split_dir: Path, classes: list[str]) -> FileSamples:
        paths, labels = [], []
        for label, cls in enumerate(classes):
            files = image_files(split_dir / cls, self, recursive=True)
            paths += files
            labels += [label] * len(files)
        return FileSamples(paths, np.array(labels, dtype=np.int64))


register_layout(FoldersLayout())


class CaltechLayout(Layout):
    """Caltech-101/256: one folder per class; the first `train_per_class` files (by name) train."""

    def __init__(self, name: str, folder: str, wrapper: str):
        self.name, self.folder, self.wrappers = name, folder, (wrapper,)
        self.expects = (f"{folder}/<class>/<image>.jpg; train = the first train_per_class images of each "
                        "class sorted by file name, test = the rest")

    def matches(self, root):
        return (root / self.folder).is_dir()

    def find_root(self, path):
        return path.parent if path.name == self.folder and path.is_dir() else super().find_root(path)

    def read(self, root, spec):
        if spec.train_per_class is None:
            raise UserError(f"dataset {spec.name!r}: layout {self.name!r} needs 'train_per_class' in its YAML")
        base, count = root / self.folder, spec.train_per_class
        classes = [c for c in class_dirs(base) if c not in spec.exclude_classes]
        train_paths, train_labels, test_paths, test_labels = [], [], [], []
        for label, cls in enumerate(classes):
            files = image_files(base / cls, self, recursive=False)
            if len(files) <= count:
                raise self.error(base / cls, f"{len(files)} images; needs more than train_per_class={count}")
            train_paths += files[:count]
            test_paths += files[count:]
            train_labels += [label] * count
            test_labels += [label] * (len(files) - count)
        return RawSplits(FileSamples(train_paths, np.array(train_labels, dtype=np.int64)),
                         FileSamples(test_paths, np.array(test_labels, dtype=np.int64)), classes)


register_layout(CaltechLayout("caltech101", "101_ObjectCategories", "caltech101"))
register_layout(CaltechLayout("caltech256", "256_ObjectCategories", "caltech256"))


class AircraftLayout(Layout):
    name = "fgvc_aircraft"
    wrappers = ("fgvc-aircraft-2013b",)
    expects = ("fgvc-aircraft-2013b/data/images/<id>.jpg with data/images_variant_trainval.txt (train) and "
               "data/images_variant_test.txt (test), lines '<id> <variant>'")

    def matches(self, root):
        return (root / "data" / "images").is_dir()

    def read(self, root, spec):
        splits = []
        for split in ("trainval", "test"):
            path = root / "data" / f"images_variant_{split}.txt"
            # variant names may contain spaces and slashes ('F/A-18', 'Boeing 717'): split once
            pairs = [line.split(" ", 1) for line in read_lines(path, self, f"{split} split file")]
            if any(len(p) != 2 for p in pairs):
                raise self.error(path, "malformed line; expected '<image id> <variant name>'")
            splits.append((path, pairs))
        # Sorted variant names, as the study's reader (np.unique) orders them.
        classes = sorted({variant for _, variant in splits[0][1]})
        train, test = (
            FileSamples([root / "data" / "images" / f"{i}.jpg" for i, _ in pairs],
                        label_array([v for _, v in pairs], classes, self, path))
            for path, pairs in splits
        )
        return RawSplits(train, test, classes)


register_layout(AircraftLayout())


class ClassPathListLayout(Layout):
    """Split files list '<class>/<file>' paths under an images folder (DTD, Food-101)."""

    images = "images"
    suffix = ""
    split_files: dict[str, tuple[str, ...]] = {}

    def matches(self, root):
        return (root / self.images).is_dir() and all(
            (root / f).parent.is_dir() for files in self.split_files.values() for f in files)

    def read(self, root, spec):
        lines = {split: [line for f in files for line in read_lines(root / f, self, f"{split} split file")]
                 for split, files in self.split_files.items()}
        classes = sorted({line.split("/")[0] for line in lines["train"]})
        train, test = (
            FileSamples([root / self.images / f"{line}{self.suffix}" for line in lines[split]],
                        label_array([line.split("/")[0] for line in lines[split]], classes, self,
                                    root / self.split_files[split][0]))
            for split in ("train", "test")
        )
        return RawSplits(train, test, classes)


class DTDLayout(ClassPathListLayout):
    name = "dtd"
    wrappers = ("dtd", "dtd/dtd")
    split_files = {"train": ("labels/train1.txt", "labels/val1.txt"), "test": ("labels/test1.txt",)}
    expects = ("dtd/images/<class>/<file>.jpg with dtd/labels/train1.txt, val1.txt, test1.txt "
               "(partition 1; train = train1 + val1, test = test1)")


register_layout(DTDLayout())


class Food101Layout(ClassPathListLayout):
    name = "food101"
    wrappers = ("food-101",)
    suffix = ".jpg"
    split_files = {"train": ("meta/train.txt",), "test": ("meta/test.txt",)}
    expects = ("food-101/images/<class>/<id>.jpg with food-101/meta/train.txt and meta/test.txt "
               "('<class>/<id>' lines)")


register_layout(Food101Layout())


class Flowers102Layout(Layout):
    name = "flowers102"
    wrappers = ("flowers-102",)
    expects = ("flowers-102/jpg/image_NNNNN.jpg with imagelabels.mat and setid.mat; "
               "train = trnid + valid (2,040 images), test = tstid (6,149)")

    def matches(self, root):
        return (root / "jpg").is_dir() and (root / "imagelabels.mat").is_file()

    def read(self, root, spec):
        labels = np.atleast_1d(load_mat(root / "imagelabels.mat", self, "labels")).astype(np.int64)
        ids = {key: np.atleast_1d(load_mat(root / "setid.mat", self, key)).astype(np.int64)
               for key in ("trnid", "valid", "tstid")}
        originals = sorted(set(labels.tolist()))  # 1-based class ids
        remap = {c: i for i, c in enumerate(originals)}

        def samples(image_ids: np.ndarray) -> FileSamples:
            if image_ids.size and (image_ids.min() < 1 or image_ids.max() > len(labels)):
                raise self.error(root / "setid.mat", f"image ids outside 1..{len(labels)} of imagelabels.mat")
            return FileSamples([root / "jpg" / f"image_{i:05d}.jpg" for i in image_ids],
                               np.array([remap[labels[i - 1]] for i in image_ids], dtype=np.int64))

        train = samples(np.concatenate([ids["trnid"], ids["valid"]]))
        return RawSplits(train, samples(ids["tstid"]), [str(c) for c in originals])


register_layout(Flowers102Layout())


class PetsLayout(Layout):
    name = "oxford_pets"
    wrappers = ("oxford-iiit-pet",)
    expects = ("oxford-iiit-pet/images/<Breed>_<n>.jpg with annotations/trainval.txt (train) and "
               "annotations/test.txt (test), lines '<image> <class id> <species> <breed id>'")

    def matches(self, root):
        return (root / "images").is_dir() and (root / "annotations").is_dir()

    def read(self, root, spec):
        rows = {}
        for split in ("trainval", "test"):
            path = root / "annotations" / f"{split}.txt"
            lines = [line.split() for line in read_lines(path, self, f"{split} split file")
                     if not line.startswith("#")]
            if any(len(p) < 2 or not p[1].isdigit() for p in lines):
                raise self.error(path, "malformed line; expected '<image> <class id> ...'")
            rows[split] = [(p[0], int(p[1])) for p in lines]
        ids = sorted({cid for _, cid in rows["trainval"]})
        names = {cid: image.rsplit("_", 1)[0] for image, cid in rows["trainval"]}
        classes = [names[c] for c in ids]
        train, test = (
            FileSamples([root / "images" / f"{image}.jpg" for image, _ in rows[split]],
                        label_array([names.get(cid, str(cid)) for _, cid in rows[split]], classes, self,
                                    root / "annotations" / f"{split}.txt"))
            for split in ("trainval", "test")
        )
        return RawSplits(train, test, classes)


register_layout(PetsLayout())


class StanfordCarsLayout(Layout):
    name = "stanford_cars"
    wrappers = ("stanford_cars",)
    expects = ("stanford_cars/cars_train/, cars_test/, devkit/cars_meta.mat, devkit/cars_train_annos.mat "
               "and cars_test_annos_withlabels.mat (torchvision's layout)")

    def matches(self, root):
        return (root / "devkit").is_dir() and (root / "cars_train").is_dir()

    def read(self, root, spec):
        classes = [str(c) for c in np.atleast_1d(load_mat(root / "devkit" / "cars_meta.mat", self, "class_names"))]
        test_annos = root / "cars_test_annos_withlabels.mat"
        if not test_annos.is_file() and (root / "devkit" / test_annos.name).is_file():
            test_annos = root / "devkit" / test_annos.name
        train = self._samples(root / "devkit" / "cars_train_annos.mat", root / "cars_train", len(classes))
        return RawSplits(train, self._samples(test_annos, root / "cars_test", len(classes)), classes)

    def _samples(self, annos: Path, images: Path, num_classes: int) -> FileSamples:
        records = np.atleast_1d(load_mat(annos, self, "annotations"))
        try:
            paths = [images / str(r["fname"]) for r in records]
            labels = np.array([int(r["class"]) - 1 for r in records], dtype=np.int64)
        except (ValueError, IndexError, KeyError):
            raise self.error(annos, "annotations lack 'fname'/'class' fields") from None
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise self.error(annos, f"class ids outside 1..{num_classes} of cars_meta.mat")
        return FileSamples(paths, labels)


register_layout(StanfordCarsLayout())


class SUN397Layout(Layout):
    name = "sun397"
    wrappers = ("SUN397",)
    expects = ("SUN397/ClassName.txt, SUN397/<letter>/<class>/sun_*.jpg and Partitions/Training_01.txt + "
               "Testing_01.txt (partition 1, lines '/<letter>/<class>/<file>'; the two files may also "
               "sit beside ClassName.txt)")

    def matches(self, root):
        return (root / "ClassName.txt").is_file()

    def read(self, root, spec):
        # '/a/abbey' -> 'abbey', '/b/bakery/shop' -> 'bakery/shop' (as torchvision names them)
        classes = ["/".join(line.strip("/").split("/")[1:])
                   for line in read_lines(root / "ClassName.txt", self, "class list")]
        splits = []
        for split in ("Training_01.txt", "Testing_01.txt"):
            path = root / "Partitions" / split
            path = path if path.is_file() or not (root / split).is_file() else root / split
            parts = [line.strip("/").split("/") for line in read_lines(path, self, "partition file")]
            splits.append(FileSamples([root.joinpath(*p) for p in parts],
                                      label_array(["/".join(p[1:-1]) for p in parts], classes, self, path)))
        return RawSplits(splits[0], splits[1], classes)


register_layout(SUN397Layout())

