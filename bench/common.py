"""What the training-step benches share: sparsify a model by magnitude and hold its masks the way recipes do."""
from __future__ import annotations

import torch
from torch import nn

from policies.base import Policy, TrainState
from policies.events import Event
from policies.modifiers import build_recipe_policies
from policies.recipe import load_recipe_text
from utils.sparsity import magnitude_mask, prunable_parameters

# A recipe holding every prunable weight's zeros: the policy every pruning modifier shares.
HOLD = """
modifiers:
  - !EpochRangeModifier
    end_epoch: 1
  - !ConstantPruningModifier
    params: __ALL_PRUNABLE__
"""


def hold_sparse_masks(model: nn.Module, sparsity: float) -> list[Policy]:
    """Zero each prunable weight (classifier excluded) to `sparsity` by magnitude; the recipe policies that hold it."""
    with torch.no_grad():
        for w in prunable_parameters(model, exclude_prefixes=[model.classifier_name]).values():
            w.mul_(magnitude_mask(w, sparsity))
    return build_recipe_policies(load_recipe_text(HOLD, source="bench"), model=model, steps_per_epoch=10**6)[0]


def emit(policies: list[Policy], event: Event, state: TrainState) -> None:
    for policy in policies:
        policy.on_event(event, state)
