"""A tiny YOLO-format dataset in the real on-disk layout: data.yaml, images/<split>/*.jpg, labels/<split>/*.txt."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from models import build_model

COLOURS = [(230, 40, 40), (40, 200, 60), (40, 80, 230)]


def make_yolo_tree(root: Path, *, train: int = 8, val: int = 4, size: tuple[int, int] = (80, 64), classes: int = 2,
                   seed: int = 0, names_as_mapping: bool = False) -> Path:
    """Coloured rectangles (class = colour) on noise; one or two boxes per image; one background image per split."""
    rng = np.random.default_rng(seed)
    w, h = size
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            lines = []
            for _ in range(0 if i == count - 1 else int(rng.integers(1, 3))):
                c = int(rng.integers(0, classes))
                bw, bh = int(rng.integers(w // 5, w // 2)), int(rng.integers(h // 5, h // 2))
                x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                pixels[y0:y0 + bh, x0:x0 + bw] = COLOURS[c]
                lines.append(f"{c} {(x0 + bw / 2) / w:.6f} {(y0 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
            Image.fromarray(pixels).save(root / "images" / split / f"{split}_{i}.jpg", quality=95)
            if lines:                         # the last image of a split is background: no label file
                (root / "labels" / split / f"{split}_{i}.txt").write_text("\n".join(lines) + "\n")
    names = [f"class{c}" for c in range(classes)]
    data = {"path": ".", "train": "images/train", "val": "images/val", "nc": classes,
            "names": dict(enumerate(names)) if names_as_mapping else names}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root / "data.yaml"


@pytest.fixture
def yolo_tree(tmp_path):
    return make_yolo_tree(tmp_path / "tiny_yolo")


def write_sparse_yolov5n(path: Path) -> dict[str, torch.Tensor]:
    """A yolov5n upstream (80 classes) with half of every backbone/neck conv zeroed, saved as a plain state dict;
    returns the zero pattern of those convs."""
    torch.manual_seed(0)
    model = build_model("yolov5n", num_classes=80)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 4 and not name.startswith("model.24"):
                p[p.abs() <= p.abs().flatten().median()] = 0.0
    torch.save(model.state_dict(), path)
    return {n: p.detach() == 0 for n, p in model.named_parameters() if p.ndim == 4 and not n.startswith("model.24")}
