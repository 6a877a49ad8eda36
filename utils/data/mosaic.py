"""YOLOv5's mosaic: four training images around a random centre of a 2S x 2S canvas, then a random scale and
translation back to S x S (its `load_mosaic` + `random_perspective` with the default hyperparameters: scale 0.5,
translate 0.1, no rotation, shear or perspective). Boxes follow the pixels; boxes cropped to under 10% of their
area, to 2 px or less a side, or to an aspect ratio of 100 or more are dropped, as YOLOv5 drops them.

Boxes here are pixels, (n, 5): class, x1, y1, x2, y2. Draws come from torch's RNG (the run seeds it per epoch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PAD_VALUE = 114 / 255


def draw_uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def tile4(images: list[torch.Tensor], boxes: list[torch.Tensor], size: int,
          centre: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2S x 2S canvas: image k's corner (bottom-right, bottom-left, top-right, top-left for k = 0..3) at
    `centre`, cropped by the canvas; its boxes shifted and clipped alike. Images have a longest side of S."""
    xc, yc = centre
    canvas = torch.full((3, 2 * size, 2 * size), PAD_VALUE, dtype=images[0].dtype)
    placed = []
    for k, (image, rows) in enumerate(zip(images, boxes)):
        _, h, w = image.shape
        left, top = (xc - w if k in (0, 2) else xc), (yc - h if k in (0, 1) else yc)   # where the image's corner lands
        x1, y1 = max(left, 0), max(top, 0)
        x2, y2 = min(left + w, 2 * size), min(top + h, 2 * size)
        canvas[:, y1:y2, x1:x2] = image[:, y1 - top:y2 - top, x1 - left:x2 - left]
        placed.append(rows + torch.tensor([0.0, left, top, left, top]))
    out = torch.cat(placed) if placed else torch.zeros((0, 5))
    out[:, 1:] = out[:, 1:].clamp(0, 2 * size)
    return canvas, out


def scale_translate(canvas: torch.Tensor, boxes: torch.Tensor, size: int, *, scale: float,
                    shift: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """S x S out of the canvas: its centre scaled by `scale` about itself and moved to `shift` (pixels of the
    output). Returns the image and the boxes that stay YOLOv5's candidates."""
    full = canvas.shape[-1]
    resized_side = max(1, round(full * scale))
    scale = resized_side / full
    resized = F.interpolate(canvas[None], size=(resized_side, resized_side), mode="bilinear", align_corners=False,
                            antialias=scale < 1)[0].clamp(0, 1)
    ox, oy = round(shift[0] - scale * full / 2), round(shift[1] - scale * full / 2)   # output = scale * canvas + o
    out = torch.full((3, size, size), PAD_VALUE, dtype=canvas.dtype)
    x1, y1, x2, y2 = max(ox, 0), max(oy, 0), min(ox + resized_side, size), min(oy + resized_side, size)
    if x1 < x2 and y1 < y2:
        out[:, y1:y2, x1:x2] = resized[:, y1 - oy:y2 - oy, x1 - ox:x2 - ox]
    moved = boxes.clone()
    moved[:, 1:] = boxes[:, 1:] * scale + torch.tensor([ox, oy, ox, oy], dtype=boxes.dtype)
    moved[:, 1:] = moved[:, 1:].clamp(0, size)
    keep = box_candidates(boxes[:, 1:] * scale, moved[:, 1:])
    return out, moved[keep]


def box_candidates(before: torch.Tensor, after: torch.Tensor, *, min_side: float = 2.0, area_ratio: float = 0.1,
                   max_aspect: float = 100.0) -> torch.Tensor:
    """Which boxes (x1, y1, x2, y2; `before` scaled like `after`, not cropped) survive the crop (YOLOv5's rule)."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = torch.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > min_side) & (h2 > min_side) & (w2 * h2 / (w1 * h1 + 1e-16) > area_ratio) & (aspect < max_aspect)


def mosaic(images: list[torch.Tensor], boxes: list[torch.Tensor], size: int, *, scale_range: float = 0.5,
           translate: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """One mosaic sample from four (image with longest side S, pixel boxes) pairs, with YOLOv5's draws."""
    centre = (int(draw_uniform(size / 2, 3 * size / 2)), int(draw_uniform(size / 2, 3 * size / 2)))
    canvas, tiled = tile4(images, boxes, size, centre)
    scale = draw_uniform(1 - scale_range, 1 + scale_range)
    shift = (draw_uniform(0.5 - translate, 0.5 + translate) * size, draw_uniform(0.5 - translate, 0.5 + translate) * size)
    return scale_translate(canvas, tiled, size, scale=scale, shift=shift)
