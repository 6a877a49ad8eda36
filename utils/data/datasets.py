"""Torch datasets over the samples a layout lists: image files decoded on access, or in-memory tensors."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from utils.data.layouts.base import FileSamples, Samples, TensorSamples
from utils.errors import UserError


def read_image(path: Path) -> Image.Image:
    """Decode one image as RGB; an unreadable file raises a UserError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UserError(f"{path}: cannot read image ({type(err).__name__}: {err}); "
                        "re-extract the dataset or delete the file") from None


class ImageFileDataset(Dataset):
    """Image files decoded with PIL on access."""

    def __init__(self, samples: FileSamples, transform: Callable):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(read_image(self.samples.paths[index])), int(self.samples.labels[index])


# Transforms that give the same output every call: they can run once, batched, over an in-memory split.
DETERMINISTIC_TRANSFORMS = (v2.ToImage, v2.Resize, v2.CenterCrop, v2.ToDtype, v2.Normalize)
PRECOMPUTE_BUDGET_BYTES = 512 * 2**20


def split_deterministic_prefix(transform: Callable) -> tuple[list[Callable], list[Callable]]:
    """(leading deterministic steps, the rest) of a v2.Compose; ([], [transform]) for anything else."""
    if not isinstance(transform, v2.Compose):
        return [], [transform]
    steps = list(transform.transforms)
    cut = 0
    while cut < len(steps) and isinstance(steps[cut], DETERMINISTIC_TRANSFORMS):
        cut += 1
    return steps[:cut], steps[cut:]


class TensorImageDataset(Dataset):
    """In-memory C x H x W images; grayscale is replicated to 3 channels.

    The transform's deterministic leading steps (resize, crop, scale, normalise) run once over the whole
    split, batched -- the same kernels give the same values -- so each access only pays for the random
    steps. Splits whose prepared copy would exceed PRECOMPUTE_BUDGET_BYTES keep per-sample transforms.
    """

    def __init__(self, samples: TensorSamples, transform: Callable):
        self.samples, self.transform = samples, transform
        self.prepared: torch.Tensor | None = None
        prefix, rest = split_deterministic_prefix(transform)
        if prefix:
            first = v2.Compose(prefix)(self._three_channels(samples.images[:1]))
            if first.element_size() * first.numel() * len(samples) <= PRECOMPUTE_BUDGET_BYTES:
                self.prepared = torch.cat([v2.Compose(prefix)(self._three_channels(chunk)).as_subclass(torch.Tensor)
                                           for chunk in samples.images.split(4096)])
                self.transform = v2.Compose(rest) if rest else None

    @staticmethod
    def _three_channels(images: torch.Tensor) -> torch.Tensor:
        return images.expand(-1, 3, -1, -1) if images.shape[-3] == 1 else images

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.prepared is not None:
            image = self.prepared[index]
        else:
            image = self.samples.images[index]
            if image.shape[0] == 1:
                image = image.repeat(3, 1, 1)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.samples.labels[index])


def make_dataset(samples: Samples, transform: Callable) -> Dataset:
    if isinstance(samples, FileSamples):
        return ImageFileDataset(samples, transform)
    return TensorImageDataset(samples, transform)
