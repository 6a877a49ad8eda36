"""Pure mask math for every recipe `mask_type`: unstructured, blockK (K consecutive input channels) and N:M.

Blocks and N:M groups run along the input-channel dimension (dim 1 of a conv or linear weight), the layout
int8 VNNI kernels and sparse tensor cores exploit. Masks are bool tensors; True keeps a weight. Exactly
round(sparsity * count) entries (or blocks) are pruned, with ties broken by a stable sort.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F

from utils.sparsity.masks import global_magnitude_masks, magnitude_mask


@dataclass(frozen=True)
class MaskType:
    kind: str          # "unstructured" | "block" | "nm"
    block: int = 1     # block length (block) or M (nm)
    keep: int = 0      # N of N:M: entries kept per group of M


def parse_mask_type(value: object) -> MaskType:
    """'unstructured', 'block4' (or 'blockK', or SparseML's [1, K]) and 'N:M' (N kept of every M)."""
    if value == "unstructured":
        return MaskType("unstructured")
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == 1 and int(value[1]) >= 1:
        return MaskType("block", block=int(value[1]))
    text = str(value)
    if m := re.fullmatch(r"block(\d+)", text):
        return MaskType("block", block=int(m.group(1)))
    if m := re.fullmatch(r"(\d+):(\d+)", text):
        n, mm = int(m.group(1)), int(m.group(2))
        if 0 < n < mm:
            return MaskType("nm", block=mm, keep=n)
    raise ValueError(f"unknown mask_type {value!r}; use 'unstructured', 'block4' or 'N:M' like '2:4'")


def _channels_last(weight: torch.Tensor) -> torch.Tensor:
    """|w| with the input-channel dimension moved last (a 1-d tensor is one row)."""
    t = weight.detach().abs()
    if t.dim() == 1:
        return t.unsqueeze(0)
    return t.movedim(1, -1) if t.dim() > 2 else t


def _from_channels_last(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 1:
        return mask.reshape(like.shape)
    return mask.movedim(-1, 1).contiguous() if like.dim() > 2 else mask


def block_scores(weight: torch.Tensor, block: int) -> torch.Tensor:
    """Mean |w| of each block of `block` consecutive input channels (a partial last block averages what it has)."""
    t = _channels_last(weight)
    pad = (-t.shape[-1]) % block
    valid = torch.ones_like(t)
    if pad:
        t, valid = F.pad(t, (0, pad)), F.pad(valid, (0, pad))
    return (t.reshape(-1, block).sum(1) / valid.reshape(-1, block).sum(1))


def expand_block_mask(block_keep: torch.Tensor, like: torch.Tensor, block: int) -> torch.Tensor:
    """Per-block keep flags -> an element mask shaped like `like`."""
    shape = list(_channels_last(like).shape)
    pad = (-shape[-1]) % block
    padded = shape[:-1] + [shape[-1] + pad]
    mask = block_keep.reshape(-1, 1).expand(-1, block).reshape(padded)[..., :shape[-1]]
    return _from_channels_last(mask, like)


def nm_scores(weight: torch.Tensor, n_keep: int, m: int) -> torch.Tensor:
    """|w| for entries that may be pruned under N:M (the M-N smallest of each group), +inf for the rest."""
    t = _channels_last(weight)
    if t.shape[-1] % m:
        raise ValueError(f"N:M masks need input channels divisible by {m}; a weight of shape "
                         f"{tuple(weight.shape)} has {t.shape[-1]}")
    groups = t.reshape(-1, m)
    ranks = torch.argsort(torch.argsort(groups, dim=1, stable=True), dim=1, stable=True)
    scores = torch.where(ranks < m - n_keep, groups, torch.full_like(groups, float("inf")))
    return _from_channels_last(scores.reshape(t.shape), weight)


def _check_nm(sparsity: float, mt: MaskType) -> None:
    limit = 1 - mt.keep / mt.block
    if sparsity > limit + 1e-9:
        raise ValueError(f"{mt.keep}:{mt.block} masks allow at most {limit:.4f} sparsity, asked {sparsity}")


def layer_mask(weight: torch.Tensor, sparsity: float, mask_type: MaskType) -> torch.Tensor:
    """One tensor's mask at `sparsity` for any mask type."""
    if mask_type.kind == "unstructured":
        return magnitude_mask(weight, sparsity)
    if mask_type.kind == "block":
        keep = magnitude_mask(block_scores(weight, mask_type.block), sparsity)
        return expand_block_mask(keep, weight, mask_type.block)
    _check_nm(sparsity, mask_type)
    return magnitude_mask(nm_scores(weight, mask_type.keep, mask_type.block), sparsity)


def global_masks(params: Mapping[str, torch.Tensor], sparsity: float, mask_type: MaskType) -> dict[str, torch.Tensor]:
    """One threshold across all tensors (over blocks for block masks)."""
    if mask_type.kind == "unstructured":
        return global_magnitude_masks(params, sparsity)
    if mask_type.kind == "nm":
        _check_nm(sparsity, mask_type)
        scores = {n: nm_scores(p, mask_type.keep, mask_type.block) for n, p in params.items()}
        return global_magnitude_masks(scores, sparsity)
    scores = {n: block_scores(p, mask_type.block) for n, p in params.items()}
    keep = global_magnitude_masks(scores, sparsity)
    return {n: expand_block_mask(keep[n], p, mask_type.block) for n, p in params.items()}


def make_masks(params: Mapping[str, torch.Tensor], sparsity: float | Mapping[str, float], *,
               mask_type: MaskType, global_scope: bool) -> dict[str, torch.Tensor]:
    """Masks for all `params`: one global threshold, or each tensor at its own (or the shared) sparsity."""
    if global_scope:
        if not isinstance(sparsity, (int, float)):
            raise ValueError("global pruning needs one sparsity, not a per-layer mapping")
        return global_masks(params, float(sparsity), mask_type)
    per_layer = sparsity if isinstance(sparsity, Mapping) else {n: float(sparsity) for n in params}
    return {n: layer_mask(p, per_layer[n], mask_type) for n, p in params.items()}
