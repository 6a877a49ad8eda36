"""Fixed sparsity masks: pruned gradients and weights stay exactly zero through any optimizer."""
from __future__ import annotations

import logging

import torch

from policies.base import Policy, TrainState
from utils.errors import UserError
from utils.masks import apply_masks_

log = logging.getLogger(__name__)


class FixedMaskPolicy(Policy):
    """Holds masks fixed: zero pruned grads after backward, re-zero pruned weights after each step."""

    name = "fixed_mask"

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = masks
        self._params: list[torch.Tensor] = []
        self._float_masks: list[torch.Tensor] = []

    def on_fit_start(self, state: TrainState) -> None:
        named = dict(state.model.named_parameters())
        unknown = sorted(set(self.masks) - set(named))
        assert not unknown, f"masks for parameters the model lacks: {unknown[:5]}"
        self.masks = {n: m.to(state.device) for n, m in self.masks.items()}
        self._params = [named[n] for n in self.masks]
        # Float copies so the hot path is one fused multiply per list, no dtype casts per step.
        self._float_masks = [m.to(named[n].dtype) for n, m in self.masks.items()]
        apply_masks_(named, self.masks)

    def on_after_backward(self, state: TrainState) -> None:
        if not self._params:
            return
        grads = [p.grad for p in self._params if p.grad is not None]
        if len(grads) == len(self._params):
            torch._foreach_mul_(grads, self._float_masks)
        else:
            for p, m in zip(self._params, self._float_masks):
                if p.grad is not None:
                    p.grad.mul_(m)

    def on_after_optimizer_step(self, state: TrainState) -> None:
        if not self._params:
            return
        with torch.no_grad():
            torch._foreach_mul_(self._params, self._float_masks)

    def state_dict(self) -> dict:
        return {"masks": {n: m.cpu() for n, m in self.masks.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.masks = state["masks"]

    def on_fit_end(self, state: TrainState) -> None:
        named = dict(state.model.named_parameters())
        bad = [n for n, m in self.masks.items() if bool((named[n].detach()[~m] != 0).any())]
        if bad:
            raise UserError(f"sparsity mask violated after training in {bad[:5]}: this is a bug, please report it")
