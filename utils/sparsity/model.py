"""A model's prunable weights as a whole: which layers are sparse, how sparse, and one-shot magnitude pruning.

Models here name their classifier (`model.classifier_name`); it is never counted nor pruned: a transfer
run replaces it with a fresh dense head.
"""
from __future__ import annotations

import torch
from torch import nn

from utils.errors import UserError
from utils.sparsity.masks import (
    apply_masks_,
    global_magnitude_masks,
    global_sparsity,
    magnitude_mask,
    prunable_parameters,
)


def backbone_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Conv and linear weights of everything but the classifier."""
    return prunable_parameters(model, exclude_prefixes=[model.classifier_name])


def sparse_layers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Backbone weights that hold at least one zero."""
    return {n: p for n, p in backbone_weights(model).items() if bool((p == 0).any())}


def measured_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all backbone weights together."""
    return global_sparsity(backbone_weights(model))


def magnitude_prune_(model: nn.Module, sparsity: float, *, scope: str = "global") -> dict[str, torch.Tensor]:
    """Zero the smallest backbone weights (one threshold, or one per layer); returns the masks."""
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"--sparsity must be in [0, 1), got {sparsity}")
    params = backbone_weights(model)
    if scope == "global":
        masks = global_magnitude_masks(params, sparsity)
    elif scope == "layer":
        masks = {n: magnitude_mask(p, sparsity) for n, p in params.items()}
    else:
        raise UserError(f"--scope must be 'global' or 'layer', got {scope!r}")
    apply_masks_(params, masks)
    return masks
