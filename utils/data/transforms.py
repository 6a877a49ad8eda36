"""Image transforms shared by every dataset: the study's 224 px pipeline and a small-image one.

Both pipelines accept a PIL image or a C x H x W tensor (uint8 0..255 or float 0..1) and return a
plain float32 tensor, normalised with the given mean/std.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchvision.transforms import v2

from utils.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The study's ImageNet-size pipeline: random-resized crops for training, resize + center crop for test.
IMAGENET_TRAIN_SIZE = 224
IMAGENET_RESIZE_SIZE = 256

INTERPOLATIONS = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}


def interpolation_mode(name: str) -> v2.InterpolationMode:
    """Map 'bilinear' / 'bicubic' (a checkpoint flavour's setting) to torchvision's enum."""
    if name not in INTERPOLATIONS:
        raise UserError(
            f"unknown interpolation {name!r}; valid: {', '.join(sorted(INTERPOLATIONS))}"
        )
    return INTERPOLATIONS[name]


def build_transforms(
    *,
    train: bool,
    image_size: int | None,
    interpolation: str = "bilinear",
    mean: Sequence[float],
    std: Sequence[float],
    hflip: bool = True,
    native_size: int | None = None,
) -> Callable:
    """Build the train or test transform.

    image_size None or 224: the study's pipeline (train RandomResizedCrop(224) + flip, test
    Resize(256) + CenterCrop(224)). Another int: small-model pipeline; images whose native size
    differs are resized (short side) and center-cropped to image_size, then train adds
    RandomCrop(image_size, padding=image_size // 8) + flip.
    """
    mode = interpolation_mode(interpolation)
    if len(mean) != 3 or len(std) != 3:
        raise UserError(f"mean/std need 3 values each (one per RGB channel); got {mean}, {std}")
    steps: list[Callable] = [v2.ToImage()]
    if image_size is None or image_size == IMAGENET_TRAIN_SIZE:
        if train:
            steps.append(v2.RandomResizedCrop(IMAGENET_TRAIN_SIZE, interpolation=mode, antialias=True))
        else:
            steps += [
                v2.Resize(IMAGENET_RESIZE_SIZE, interpolation=mode, antialias=True),
                v2.CenterCrop(IMAGENET_TRAIN_SIZE),
            ]
    else:
        if image_size <= 0:
            raise UserError(f"image_size must be a positive number of pixels; got {image_size}")
        if native_size != image_size:
            steps += [
                v2.Resize(image_size, interpolation=mode, antialias=True),
                v2.CenterCrop(image_size),
            ]
        if train:
            steps.append(v2.RandomCrop(image_size, padding=image_size // 8))
    if train and hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
        v2.ToPureTensor(),
    ]
    return v2.Compose(steps)
