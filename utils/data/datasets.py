"""Torch datasets over the samples a layout lists: image files decoded on access, or in-memory tensors."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
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


class BatchedCropFlip:
    """The small-image pipeline's random tail -- RandomCrop(padding) -> RandomHorizontalFlip -> ToDtype -> Normalize
    -- run on a whole batch at once: the padded split is scaled and normalised once (element-wise, so the values
    are the ones the per-sample steps give), then each batch is cut out by index arithmetic. Draws from torch's
    global generator, as the per-sample steps do: seeded runs stay reproducible."""

    def __init__(self, padded: torch.Tensor, *, size: tuple[int, int], flip_p: float):
        self.padded, self.size, self.flip_p = padded, size, flip_p

    @classmethod
    def build(cls, images: torch.Tensor, steps: list[Callable]) -> "BatchedCropFlip | None":
        """The batched form of `steps` over `images` (uint8, or float 0..1), or None when they are not that tail."""
        crop, flip, rest = None, 0.0, list(steps)
        if rest and isinstance(rest[0], v2.RandomCrop):
            crop = rest.pop(0)
            if crop.pad_if_needed or crop.padding_mode != "constant" or crop._fill != {"others": 0}:
                return None
        if rest and isinstance(rest[0], v2.RandomHorizontalFlip):
            flip = rest.pop(0).p
        if rest and isinstance(rest[-1], v2.ToPureTensor):
            rest.pop()
        if images.dtype not in (torch.uint8, torch.float32) or [type(t) for t in rest] != [v2.ToDtype, v2.Normalize] \
                or rest[0].dtype != torch.float32 or not rest[0].scale:
            return None
        left, right, top, bottom = crop.padding if crop and crop.padding else (0, 0, 0, 0)   # None: no padding
        padded = torch.nn.functional.pad(images, (left, right, top, bottom))
        size = crop.size if crop else tuple(images.shape[-2:])
        if padded.shape[-2] < size[0] or padded.shape[-1] < size[1] or 4 * padded.numel() > PRECOMPUTE_BUDGET_BYTES:
            return None
        scaled = torch.cat([v2.Compose(rest)(tv_tensors.Image(chunk)).as_subclass(torch.Tensor)
                            for chunk in padded.split(4096)])
        return cls(scaled, size=size, flip_p=flip)

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        n, (h, w) = len(indices), self.size
        top = torch.randint(0, self.padded.shape[-2] - h + 1, (n, 1, 1))
        left = torch.randint(0, self.padded.shape[-1] - w + 1, (n, 1, 1))
        cols = left + torch.arange(w).view(1, 1, w)
        if self.flip_p:
            flipped = (torch.rand(n) < self.flip_p).view(n, 1, 1)
            cols = torch.where(flipped, cols.flip(-1), cols)
        rows = top + torch.arange(h).view(1, h, 1)
        picked = self.padded[indices]                                      # n x C x Hp x Wp
        return picked[torch.arange(n).view(n, 1, 1, 1), torch.arange(picked.shape[1]).view(1, -1, 1, 1),
                      rows.unsqueeze(1), cols.unsqueeze(1)]


class TensorImageDataset(Dataset):
    """In-memory C x H x W images; grayscale is replicated to 3 channels.

    The transform's deterministic leading steps (resize, crop, scale, normalise) run once over the whole
    split, batched -- the same kernels give the same values -- so each access only pays for the random
    steps, and the small-image pipeline's random steps run per batch (`BatchedCropFlip`, through the
    DataLoader's `__getitems__`). Splits whose prepared copy would exceed PRECOMPUTE_BUDGET_BYTES keep
    per-sample transforms.
    """

    def __init__(self, samples: TensorSamples, transform: Callable):
        self.samples, self.transform = samples, transform
        self.prepared: torch.Tensor | None = None
        self.batched: BatchedCropFlip | None = None
        prefix, rest = split_deterministic_prefix(transform)
        if prefix:
            first = v2.Compose(prefix)(self._three_channels(samples.images[:1]))
            if first.element_size() * first.numel() * len(samples) <= PRECOMPUTE_BUDGET_BYTES:
                self.prepared = torch.cat([v2.Compose(prefix)(self._three_channels(chunk)).as_subclass(torch.Tensor)
                                           for chunk in samples.images.split(4096)])
                self.transform = v2.Compose(rest) if rest else None
                if rest:
                    self.batched = BatchedCropFlip.build(self.prepared, rest)

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

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A whole batch (the DataLoader asks for one with this): batched random steps where they apply."""
        if self.batched is None:
            return [self[i] for i in indices]
        images = self.batched(torch.as_tensor(indices))
        return list(zip(images.unbind(0), [int(label) for label in self.samples.labels[indices]]))


def make_dataset(samples: Samples, transform: Callable) -> Dataset:
    if isinstance(samples, FileSamples):
        return ImageFileDataset(samples, transform)
    return TensorImageDataset(samples, transform)
