"""YOLO-format detection datasets, as people have them: a data.yaml and images with one label file each.

    data.yaml   path: ROOT (optional; relative to the data.yaml's folder), train/val/test: a folder of images,
                a .txt file of image paths, or a list of those (relative to ROOT); nc: N; names: [..] or {0: ..}
    images      .../images/<split>/x.jpg  ->  labels .../labels/<split>/x.txt (the last 'images' folder swapped
                for 'labels'), one 'class cx cy w h' line per box, normalised to [0, 1]; no file or an empty
                file: background
A malformed label line stops before training with one line naming `file:line`. Images are letterboxed to a
square `imgsz` (grey 114 padding, as YOLOv5); training adds, with probability `mosaic`, YOLOv5's four-image mosaic
(utils.data.yolo_augment), else a random scale (0.5-1.5) of the letterboxed image, then horizontal flip and HSV
jitter, drawn from torch's RNG (seeded per epoch by the run). Samples are (image (3, S, S) in [0, 1],
boxes (n, 5): class, cx, cy, w, h normalised to the letterboxed image); `collate` stacks them with the image
index in front: (N, 6).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from utils.config import read_yaml
from utils.data.loading import DatasetSplits
from utils.data.spec import DatasetSpec
from utils.data.verify import verify_images
from utils.data.yolo_augment import PAD_VALUE, hsv_jitter, mosaic
from utils.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class YoloData:
    """A parsed data.yaml: the class names and each split's (image, label) files."""

    source: Path
    names: list[str]
    splits: dict[str, list[tuple[Path, Path]]]

    @property
    def num_classes(self) -> int:
        return len(self.names)


def label_path(image: Path) -> Path:
    """YOLOv5's rule: the last `images` folder of the path becomes `labels`, the suffix `.txt`."""
    parts = list(image.parts)
    if "images" in parts:
        at = len(parts) - 1 - parts[::-1].index("images")
        parts[at] = "labels"
    return Path(*parts).with_suffix(".txt")


def _names(data: dict, source: Path) -> list[str]:
    names, nc = data.get("names"), data.get("nc")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int)):
        raise UserError(f"{source}: nc must be an integer (the number of classes), got {nc!r}")
    if nc is not None and nc < 1:
        raise UserError(f"{source}: nc is {nc}; a dataset needs at least one class (nc: N and names: [N names])")
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise UserError(f"{source}: 'names' as a mapping needs the keys 0..{len(keys) - 1}, got {keys[:5]}")
        names = [names[k] for k in keys]
    if names is None and nc is not None:
        log.warning("%s: no 'names' key; the %d classes are named '0'..'%d' in results (add names: [...])",
                    source, nc, nc - 1)
        names = [str(i) for i in range(nc)]
    if not isinstance(names, list) or not names:
        raise UserError(f"{source}: 'names' must be a non-empty list of class names or a {{0: name, ...}} mapping "
                        f"(or give nc: N), got {names!r}"[:300])
    if nc is not None and nc != len(names):
        raise UserError(f"{source}: nc is {nc} but 'names' lists {len(names)} classes; make them agree")
    return [str(n) for n in names]


def _split_images(entry: Any, root: Path, *, source: Path, split: str) -> list[Path]:
    """Images of one split: folders (searched recursively), .txt lists of paths, or lists of those."""
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for item in entries:
        if not isinstance(item, str):
            raise UserError(f"{source}: '{split}' must be a folder, a .txt file of image paths or a list of them")
        path = Path(item).expanduser()
        path = path if path.is_absolute() else root / path
        if path.is_dir():
            images += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file() and path.suffix == ".txt":
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line:
                    image = Path(line)
                    images.append(image if image.is_absolute() else (path.parent / image))
        else:
            raise UserError(f"{source}: '{split}: {item}' -> {path} is neither a folder nor a .txt list of images")
    if not images:
        raise UserError(f"{source}: split '{split}' has no images ({', '.join(map(str, entries))}); images end in "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))}")
    return images


def data_yaml_of(path: Path) -> Path:
    """The data.yaml of a YOLO dataset given as its folder (the file itself as it is): DIR/data.yaml, else the
    folder's only *.yaml; a folder with several and no data.yaml is refused naming them."""
    if not path.is_dir():
        return path
    if (path / "data.yaml").is_file():
        return path / "data.yaml"
    found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if len(found) == 1:
        return found[0]
    if found:
        raise UserError(f"{path}: a folder with several YAML files ({', '.join(p.name for p in found[:5])}) and no "
                        f"data.yaml; give the dataset's one, e.g. {found[0]}")
    raise UserError(f"{path}: a folder without a data.yaml; give DIR/data.yaml (path, train, val, nc, names)")


def load_yolo_data(data_yaml: str | Path, *, splits: tuple[str, ...] = ("train", "val")) -> YoloData:
    """Parse and check a data.yaml (a YOLO folder: its data.yaml, or its only *.yaml); every label file is read
    and checked now, not during training."""
    source = data_yaml_of(Path(data_yaml))
    if not source.is_file():
        raise UserError(f"{source}: data.yaml not found; a YOLO dataset is given by its data.yaml "
                        "(path, train, val, nc, names)")
    data = read_yaml(source)
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping with path, train, val, nc and names")
    names = _names(data, source)
    root = Path(str(data.get("path") or "")).expanduser()
    root = root if root.is_absolute() else (source.parent / root)
    out: dict[str, list[tuple[Path, Path]]] = {}
    for split in splits:
        if split not in data or data[split] in (None, ""):
            if split == "train" or split == "val":
                raise UserError(f"{source}: key '{split}' is missing (a folder or .txt list of {split} images)")
            continue
        images = _split_images(data[split], root, source=source, split=split)
        out[split] = [(image, label_path(image)) for image in images]
    return YoloData(source=source, names=names, splits=out)


def read_labels(path: Path, num_classes: int) -> torch.Tensor:
    """(n, 5) class, cx, cy, w, h of a label file; a malformed line is named as `file:line`."""
    if not path.is_file():
        return torch.zeros((0, 5))
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 5:
            raise UserError(f"{where}: expected 'class cx cy w h' (5 fields), got {len(fields)}: {line.strip()[:80]!r}")
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise UserError(f"{where}: not numbers: {line.strip()[:80]!r}") from None
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < num_classes:
            raise UserError(f"{where}: class {fields[0]} is not one of 0..{num_classes - 1} (nc is {num_classes})")
        if any(not 0.0 <= v <= 1.0 for v in values[1:]):
            raise UserError(f"{where}: box {' '.join(fields[1:])} is outside [0, 1]; YOLO labels are normalised "
                            "by the image width and height")
        if values[3] <= 0 or values[4] <= 0:
            raise UserError(f"{where}: box width and height must be > 0, got {fields[3]} {fields[4]}")
        rows.append(values)
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


def letterbox(image: torch.Tensor, size: int, scale: float = 1.0) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """Resize (keeping the aspect ratio; longest side size * scale, at most size) and pad to size x size.
    Returns (image, resize ratio, (left, top) padding)."""
    _, h, w = image.shape
    ratio = min(size / max(h, w) * scale, size / max(h, w))
    nh, nw = max(1, round(h * ratio)), max(1, round(w * ratio))
    resized = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    left, top = (size - nw) // 2, (size - nh) // 2
    padded = torch.full((3, size, size), PAD_VALUE, dtype=image.dtype)
    padded[:, top:top + nh, left:left + nw] = resized.clamp(0, 1)
    return padded, ratio, (left, top)


class YoloDataset(Dataset):
    """One split of a YOLO dataset as letterboxed tensors and normalised boxes (see the module docstring);
    batches need `collate_fn` (boxes per image vary)."""

    def __init__(self, items: list[tuple[Path, Path]], *, num_classes: int, imgsz: int, augment: bool,
                 mosaic: float = 0.0):
        self.items, self.imgsz, self.augment = items, imgsz, augment
        self.mosaic = mosaic if augment else 0.0
        self.labels = [read_labels(label, num_classes) for _, label in items]

    def __len__(self) -> int:
        return len(self.items)

    @staticmethod
    def collate_fn(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        return collate(batch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Samples `indices` (the DataLoader asks for a batch with this): a mosaic or the letterbox and its random
        scale per image, then flip and HSV jitter over the batch at once."""
        samples = [self._mosaic(i) if self.mosaic and float(torch.rand(())) < self.mosaic else self._letterboxed(i)
                   for i in indices]
        if not self.augment:
            return samples
        images = torch.stack([image for image, _ in samples])
        flip = torch.rand(len(samples)) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        images = hsv_jitter(images)
        out = []
        for image, (_, boxes), flipped in zip(images.unbind(0), samples, flip.tolist()):
            if flipped:
                boxes[:, 1] = 1.0 - boxes[:, 1]
            out.append((image, boxes))
        return out

    def _read(self, index: int) -> torch.Tensor:
        with Image.open(self.items[index][0]) as im:
            image = TF.to_image(im.convert("RGB"))
        return TF.to_dtype(image, torch.float32, scale=True)

    def _mosaic(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`index` and three images drawn from the split, each resized to a longest side of imgsz, as a mosaic."""
        images, boxes = [], []
        for i in [index, *torch.randint(len(self.items), (3,)).tolist()]:
            image = self._read(i)
            _, h, w = image.shape
            ratio = self.imgsz / max(h, w)
            nh, nw = max(1, round(h * ratio)), max(1, round(w * ratio))
            if (nh, nw) != (h, w):
                image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                                      antialias=ratio < 1)[0].clamp(0, 1)
            rows = self.labels[i]
            pixels = torch.stack([rows[:, 0], (rows[:, 1] - rows[:, 3] / 2) * nw, (rows[:, 2] - rows[:, 4] / 2) * nh,
                                  (rows[:, 1] + rows[:, 3] / 2) * nw, (rows[:, 2] + rows[:, 4] / 2) * nh], 1)
            images.append(image)
            boxes.append(pixels)
        image, pixels = mosaic(images, boxes, self.imgsz)
        s = self.imgsz
        xywh = torch.stack([pixels[:, 0], (pixels[:, 1] + pixels[:, 3]) / 2 / s, (pixels[:, 2] + pixels[:, 4]) / 2 / s,
                            (pixels[:, 3] - pixels[:, 1]) / s, (pixels[:, 4] - pixels[:, 2]) / s], 1)
        return image, xywh

    def _letterboxed(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._read(index)
        _, h, w = image.shape
        scale = float(torch.empty(()).uniform_(0.5, 1.5)) if self.augment else 1.0
        image, ratio, (left, top) = letterbox(image, self.imgsz, scale)
        boxes = self.labels[index].clone()
        if len(boxes):
            boxes[:, 1] = (boxes[:, 1] * w * ratio + left) / self.imgsz
            boxes[:, 2] = (boxes[:, 2] * h * ratio + top) / self.imgsz
            boxes[:, 3] = boxes[:, 3] * w * ratio / self.imgsz
            boxes[:, 4] = boxes[:, 4] * h * ratio / self.imgsz
        return image, boxes


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) images and (boxes, 6) targets: image index, class, cx, cy, w, h."""
    images = torch.stack([image for image, _ in batch])
    targets = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, (_, b) in enumerate(batch)])
    return images, targets.reshape(-1, 6)


def yolo_dataset_name(data_yaml: str | Path) -> str:
    """YOLO data's name in run names and results: its data.yaml's stem, or its folder's name for a plain
    data.yaml / dataset.yaml (a YOLO folder given without its data.yaml: the folder's name)."""
    path = Path(data_yaml).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        return path.resolve().name
    return path.resolve().parent.name if path.stem in ("data", "dataset") else path.stem


def is_detection_dataset(name: str) -> bool:
    """`--dset yolo` (with `--dset_path data.yaml`), or `--dset` given the data.yaml itself."""
    return name == "yolo" or name.endswith((".yaml", ".yml"))


def load_detection_datasets(data_yaml: str | Path, *, imgsz: int, max_train_samples: int | None = None,
                            seed: int = 0, verify: bool = True, mosaic: float = 0.0) -> DatasetSplits:
    """A data.yaml's train and val splits as DatasetSplits (the name in results: the data.yaml's stem, or its
    folder's name for a plain data.yaml)."""
    data = load_yolo_data(data_yaml)
    if max_train_samples is not None and max_train_samples < len(data.splits["train"]):
        pick = torch.randperm(len(data.splits["train"]), generator=torch.Generator().manual_seed(seed))
        chosen = sorted(pick[:max_train_samples].tolist())
        data = YoloData(data.source, data.names, {**data.splits, "train": [data.splits["train"][i] for i in chosen]})
    train, val = yolo_datasets(data, imgsz=imgsz, verify=verify, mosaic=mosaic)
    spec = DatasetSpec(name=yolo_dataset_name(data.source), label=f"YOLO data {data.source.name}",
                       num_classes=data.num_classes,
                       mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), layouts=("yolo",), hflip=True)
    meta = {"dataset": spec.name, "layout": "yolo", "root": str(data.source), "num_train": len(train),
            "num_test": len(val), "num_classes": data.num_classes, "image_size": imgsz,
            "max_train_samples": max_train_samples, "seed": seed, "mosaic": mosaic}
    return DatasetSplits(train=train, test=val, num_classes=data.num_classes, spec=spec, layout="yolo",
                         classes=list(data.names), root=data.source.parent, meta=meta)


def yolo_datasets(data: YoloData, *, imgsz: int, verify: bool = True,
                  mosaic: float = 0.0) -> tuple[YoloDataset, YoloDataset]:
    """(train, val) datasets of a parsed data.yaml (`mosaic`: the training split's probability of a mosaic
    sample); every image is checked first (utils.data.verify)."""
    if verify:
        verify_images([image for split in ("train", "val") for image, _ in data.splits[split]], root=data.source.parent)
    train = YoloDataset(data.splits["train"], num_classes=data.num_classes, imgsz=imgsz, augment=True, mosaic=mosaic)
    val = YoloDataset(data.splits["val"], num_classes=data.num_classes, imgsz=imgsz, augment=False)
    for split, dataset in (("train", train), ("val", val)):
        check_some_boxes(dataset, split=split, source=data.source)
    return train, val


def check_some_boxes(dataset: YoloDataset, *, split: str, source: Path) -> None:
    """A split with no box at all cannot train a detector (train) or give an mAP (val: it would be -1)."""
    if any(len(boxes) for boxes in dataset.labels):
        return
    image, label = dataset.items[0]
    found = ("no label file exists" if not any(lab.is_file() for _, lab in dataset.items)
             else "every label file is empty")
    raise UserError(f"{source}: no image of split '{split}' has a box ({found}; for {image} the label is read from "
                    f"{label}: the last 'images' folder becomes 'labels', the suffix .txt); "
                    + ("a detector cannot learn from background alone" if split == "train"
                       else "mAP is undefined without boxes to find"))
