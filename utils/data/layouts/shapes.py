"""`shapes`: a generated downstream task (line drawings of 8 shape classes), for demos without downloads.

Unlike `synthetic` (trivially separable stripes), shapes vary in position, size, rotation, stroke width,
contrast and noise, so accuracy is informative. Images are grayscale uint8 at `native_size`, drawn at 4x
and downsampled (antialiased). Deterministic: the same spec always gives the same images.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from utils.data.layouts.base import Layout, RawSplits, TensorSamples, register_layout
from utils.errors import UserError

SHAPES_SEED = 1234
CLASSES = ("circle", "disk", "square", "filled_square", "triangle", "plus", "cross", "star")
SCALE = 4


def _polygon(n: int, radius: float, rotation: float, cx: float, cy: float, *, star: bool = False) -> list[tuple]:
    points = []
    count = 2 * n if star else n
    for k in range(count):
        r = radius * (0.45 if star and k % 2 else 1.0)
        a = rotation + 2 * math.pi * k / count
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def draw_shape(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image of `kind` with random placement, size, rotation, stroke and noise (uint8, size x size)."""
    big = size * SCALE
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    radius = big * rng.uniform(0.2, 0.4)
    cx, cy = (big / 2 + rng.uniform(-1, 1) * (big / 2 - radius) * 0.8 for _ in range(2))
    rot = rng.uniform(0, 2 * math.pi)
    ink = int(rng.uniform(150, 255))
    width = int(SCALE * rng.uniform(1.0, 2.5))
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if kind == "circle":
        draw.ellipse(box, outline=ink, width=width)
    elif kind == "disk":
        draw.ellipse(box, fill=ink)
    elif kind in ("square", "filled_square"):
        pts = _polygon(4, radius, rot, cx, cy)
        draw.polygon(pts, fill=ink if kind == "filled_square" else None, outline=ink, width=width)
    elif kind == "triangle":
        draw.polygon(_polygon(3, radius, rot, cx, cy), outline=ink, width=width)
    elif kind in ("plus", "cross"):
        base = rot % (math.pi / 8) + (0 if kind == "plus" else math.pi / 4)  # plus ~upright, cross ~diagonal
        for a in (base, base + math.pi / 2):
            dx, dy = radius * math.cos(a), radius * math.sin(a)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=ink, width=width)
    elif kind == "star":
        draw.polygon(_polygon(5, radius, rot, cx, cy, star=True), fill=ink)
    small = np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    small = small + rng.normal(0, rng.uniform(5, 25), small.shape)
    return np.clip(small, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def make_shapes(*, size: int, train_per_class: int, test_per_class: int, seed: int = SHAPES_SEED) -> RawSplits:
    """The generated splits (kept per process: a sweep's worker draws them once for all its cells; callers
    must not modify the tensors in place)."""
    rng = np.random.default_rng(seed)

    def split(per_class: int) -> TensorSamples:
        images = np.stack([draw_shape(kind, size, rng) for kind in CLASSES for _ in range(per_class)])
        labels = np.repeat(np.arange(len(CLASSES)), per_class).astype(np.int64)
        return TensorSamples(torch.from_numpy(images).unsqueeze(1), labels)

    train = split(train_per_class)
    return RawSplits(train, split(test_per_class), list(CLASSES))


class ShapesLayout(Layout):
    name = "generated_shapes"
    needs_path = False
    expects = (f"no files: {len(CLASSES)} classes of line drawings ({', '.join(CLASSES)}) generated from "
               f"seed {SHAPES_SEED} at native_size pixels")

    def read(self, root, spec):
        if None in (spec.native_size, spec.train_per_class, spec.test_per_class):
            raise UserError(f"dataset {spec.name!r}: layout 'generated_shapes' needs native_size, "
                            "train_per_class and test_per_class in its YAML")
        return make_shapes(size=spec.native_size, train_per_class=spec.train_per_class,
                           test_per_class=spec.test_per_class)


register_layout(ShapesLayout())
