"""YOLOv5's training augmentation beyond the flip: HSV jitter, and the mosaic.

The mosaic puts four training images around a random centre of a 2S x 2S canvas, then scales and shifts it back
to S x S (YOLOv5's `load_mosaic` + `random_perspective` with the default hyperparameters: scale 0.5, translate
0.1, no rotation, shear or perspective). Boxes follow the pixels; boxes cropped to under 10% of their area, to
2 px or less a side, or to an aspect ratio of 100 or more are dropped, as YOLOv5 drops them.

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
    low, high = 0.5 - translate, 0.5 + translate
    shift = (draw_uniform(low, high) * size, draw_uniform(low, high) * size)
    return scale_translate(canvas, tiled, size, scale=scale, shift=shift)


def hsv_jitter(images: torch.Tensor, hue: float = 0.015, saturation: float = 0.7, value: float = 0.4) -> torch.Tensor:
    """YOLOv5's HSV augmentation over a batch (N, 3, H, W) in [0, 1]: per image, gains 1 + U(-1, 1) * (hsv_h, hsv_s,
    hsv_v) multiply hue (modulo a turn), saturation and value (clipped), drawn from torch's RNG."""
    gains = (torch.empty(len(images), 3).uniform_(-1, 1) * torch.tensor([hue, saturation, value]) + 1).view(-1, 3, 1, 1)
    h, s, v = rgb_to_hsv(images).unbind(1)
    h = (h * gains[:, 0]) % 1.0
    s = (s * gains[:, 1]).clamp(0, 1)
    v = (v * gains[:, 2]).clamp(0, 1)
    return hsv_to_rgb(torch.stack([h, s, v], 1))


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV, each in [0, 1] (hue in turns)."""
    r, g, b = images.unbind(1)
    high, argmax = images.max(1)
    chroma = high - images.min(1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(argmax == 0, ((g - b) / safe) % 6,
                      torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    sat = torch.where(high > 0, chroma / torch.where(high > 0, high, torch.ones_like(high)), torch.zeros_like(high))
    return torch.stack([hue, sat, high], 1)


def hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) HSV in [0, 1] -> RGB in [0, 1]."""
    h, s, v = images.unbind(1)
    k = (torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1) + (h * 6).unsqueeze(1)) % 6
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1)
