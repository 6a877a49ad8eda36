"""Pure mask math: tensors in, tensors out. A mask is a bool tensor; True keeps a weight."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def prunable_parameters(model: nn.Module, *, exclude_prefixes: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """Weights of conv and linear layers (the ones sparse checkpoints prune), by parameter name."""
    exclude = tuple(exclude_prefixes)
    params = {}
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES) and not (exclude and module_name.startswith(exclude)):
            params[f"{module_name}.weight" if module_name else "weight"] = module.weight
    return params


def masks_from_zeros(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mask = (weight != 0) for every tensor."""
    return {name: p.detach() != 0 for name, p in params.items()}


def sparsity(mask_or_weight: torch.Tensor) -> float:
    """Fraction of zeros (of a weight) or of False entries (of a mask)."""
    t = mask_or_weight
    zeros = (~t).sum() if t.dtype == torch.bool else (t == 0).sum()
    return zeros.item() / max(t.numel(), 1)


def layer_sparsity(params: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per-tensor fraction of zeros (weights) or pruned entries (masks)."""
    return {name: sparsity(t) for name, t in params.items()}


def global_sparsity(params: Mapping[str, torch.Tensor]) -> float:
    """Fraction of zeros over all tensors together (weighted by size)."""
    total = sum(t.numel() for t in params.values())
    zeros = sum(sparsity(t) * t.numel() for t in params.values())
    return zeros / total if total else 0.0


def apply_masks_(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned entries of each parameter in place."""
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def mask_grads_(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the gradient of pruned entries in place (parameters without a grad are skipped)."""
    for name, mask in masks.items():
        grad = params[name].grad
        if grad is not None:
            grad.mul_(mask)


def magnitude_mask(weight: torch.Tensor, sparsity_fraction: float) -> torch.Tensor:
    """Keep the largest-magnitude entries; exactly round(sparsity * numel) entries are pruned."""
    if not 0.0 <= sparsity_fraction <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity_fraction}")
    num_pruned = int(round(sparsity_fraction * weight.numel()))
    mask = torch.ones(weight.shape, dtype=torch.bool, device=weight.device)   # contiguous, whatever the weight's layout
    if num_pruned == 0:
        return mask
    # Stable sort on |w| makes ties deterministic, so the pruned count is exact.
    order = torch.argsort(weight.detach().abs().flatten(), stable=True)
    mask.view(-1)[order[:num_pruned]] = False
    return mask


def global_magnitude_masks(params: Mapping[str, torch.Tensor], sparsity_fraction: float) -> dict[str, torch.Tensor]:
    """One magnitude threshold across all tensors; exactly round(sparsity * total) entries pruned."""
    flat = torch.cat([p.detach().abs().flatten() for p in params.values()])
    flat_mask = magnitude_mask(flat, sparsity_fraction)
    masks, offset = {}, 0
    for name, p in params.items():
        masks[name] = flat_mask[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return masks


def check_masks_match_zeros(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of parameters with a nonzero weight where the mask says pruned."""
    return [name for name, mask in masks.items() if bool((params[name].detach()[~mask] != 0).any())]
