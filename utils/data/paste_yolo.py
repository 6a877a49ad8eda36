"""A YOLO-format detection dataset made from real offline data: Fashion-MNIST items pasted on larger canvases.

    python -m utils.data.paste_yolo OUT_DIR --classes 0 1 2 3 4 [--train 1000] [--val 200] [--canvas 96]

Each image is a dark noisy canvas with 1-3 items of the chosen Fashion-MNIST classes, each scaled by 0.8-1.6
(--scale) and pasted where it does not overlap another; its box is the tight box of the item's visible pixels.
Items come from Fashion-MNIST's training split for train and from its test split for val, so no item is in both. Writes
OUT_DIR/images/{train,val}/*.png, OUT_DIR/labels/{train,val}/*.txt and OUT_DIR/data.yaml (names: the classes'
Fashion-MNIST names; its first line, a comment, records the settings, so runs keyed by the data.yaml's text see
other data as other data). Deterministic under --seed; an existing, complete OUT_DIR made with the same settings
is kept as it is, one made with other settings is replaced whole.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from utils.cli import setup_logging
from utils.data.layouts import LAYOUTS
from utils.data.loading import get_dataset_spec
from utils.errors import UserError, exit_on_user_error
from utils.io import atomic_write_text

log = logging.getLogger(__name__)

MIN_VISIBLE = 8     # pixels of an item above this value count as visible (its box)


def items_of(split: str, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28 uint8, labels) of Fashion-MNIST's `split` restricted to `classes`."""
    spec = get_dataset_spec("fashion_mnist")
    layout = LAYOUTS.get("mnist_idx")
    root = layout.find_root(Path(spec.default_path))
    if root is None:
        raise UserError(f"{spec.default_path}: Fashion-MNIST not found; install Debian's dataset-fashion-mnist "
                        "(make data does it as root)")
    raw = layout.read(root, spec)
    samples = raw.train if split == "train" else raw.test
    images = samples.images.squeeze(1).numpy() if samples.images.ndim == 4 else samples.images.numpy()
    keep = np.isin(samples.labels, classes)
    return images[keep], samples.labels[keep]


def paste(canvas: np.ndarray, item: np.ndarray, rng: np.random.Generator, taken: list[tuple[int, int, int, int]],
          scale: tuple[float, float] = (0.8, 1.6)) -> tuple[int, int, int, int] | None:
    """Paste a scaled item where it overlaps nothing; its visible box (x0, y0, x1, y1), or None if no room."""
    size = canvas.shape[0]
    side = int(round(28 * rng.uniform(*scale)))
    scaled = F.interpolate(torch.from_numpy(item)[None, None].float(), size=(side, side), mode="bilinear",
                           align_corners=False)[0, 0].clamp(0, 255).numpy().astype(np.uint8)
    ys, xs = np.nonzero(scaled > MIN_VISIBLE)          # on the pixel values written, so the box is tight
    if len(xs) == 0:
        return None
    for _ in range(20):
        x, y = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
        box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
        if all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1] for t in taken):
            region = canvas[y:y + side, x:x + side]
            np.maximum(region, scaled[..., None], out=region)
            taken.append(box)
            return box
    return None


def write_split(out: Path, split: str, count: int, items: np.ndarray, labels: np.ndarray, classes: list[int], *,
                canvas: int, rng: np.random.Generator, noise: int = 40,
                scale: tuple[float, float] = (0.8, 1.6)) -> None:
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    index = {c: i for i, c in enumerate(classes)}
    for n in range(count):
        image = rng.integers(0, noise, (canvas, canvas, 3), dtype=np.uint8) if noise else \
            np.zeros((canvas, canvas, 3), np.uint8)
        taken: list[tuple[int, int, int, int]] = []
        lines = []
        for k in rng.choice(len(items), size=int(rng.integers(1, 4)), replace=False):
            box = paste(image, items[k], rng, taken, scale)
            if box is not None:
                x0, y0, x1, y1 = box
                lines.append(f"{index[int(labels[k])]} {(x0 + x1) / 2 / canvas:.6f} {(y0 + y1) / 2 / canvas:.6f} "
                             f"{(x1 - x0) / canvas:.6f} {(y1 - y0) / canvas:.6f}")
        Image.fromarray(image).save(out / "images" / split / f"{split}_{n:05d}.png")
        atomic_write_text(out / "labels" / split / f"{split}_{n:05d}.txt", "\n".join(lines) + "\n")


def make_paste_dataset(out: str | Path, *, classes: list[int], train: int = 1000, val: int = 200, canvas: int = 96,
                       seed: int = 0, noise: int = 40, scale: tuple[float, float] = (0.8, 1.6)) -> Path:
    """Write the dataset (see the module docstring; `noise`: the canvas noise's upper bound, `scale`: the range of
    the items' scale factors); returns its data.yaml."""
    out = Path(out)
    settings = {"classes": classes, "train": train, "val": val, "canvas": canvas, "seed": seed, "noise": noise,
                "version": 1, **({"scale": list(scale)} if tuple(scale) != (0.8, 1.6) else {})}
    stamp = out / "settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == settings and (out / "data.yaml").is_file():
        return out / "data.yaml"
    for made in ("data.yaml", "settings.json"):       # another (or an interrupted) making: start clean, so no
        (out / made).unlink(missing_ok=True)          # image of other settings stays in a split
    for made in ("images", "labels"):
        shutil.rmtree(out / made, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        items, labels = items_of(split if split == "train" else "test", classes)
        write_split(out, split, count, items, labels, classes, canvas=canvas, rng=rng, noise=noise, scale=scale)
    names = get_dataset_spec("fashion_mnist").class_names
    header = f"# made by python -m utils.data.paste_yolo with {json.dumps(settings, sort_keys=True)}\n"
    atomic_write_text(out / "data.yaml", header + yaml.safe_dump({"path": ".", "train": "images/train",
                                                                  "val": "images/val", "nc": len(classes),
                                                                  "names": [names[c] for c in classes]}))
    atomic_write_text(stamp, json.dumps(settings))
    return out / "data.yaml"


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--classes", type=int, nargs="+", required=True, help="Fashion-MNIST class indices (0-9)")
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--canvas", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, nargs=2, default=(0.8, 1.6), metavar=("LOW", "HIGH"),
                   help="range of the items' scale factors (28 px * factor)")
    args = p.parse_args(argv)
    setup_logging()
    if any(not 0 <= c <= 9 for c in args.classes):
        raise UserError(f"--classes {args.classes}: Fashion-MNIST classes are 0..9")
    data_yaml = make_paste_dataset(args.out, classes=args.classes, train=args.train, val=args.val,
                                   canvas=args.canvas, seed=args.seed, scale=tuple(args.scale))
    log.info("YOLO dataset ready: %s", data_yaml)


if __name__ == "__main__":
    main()
