"""The one mask policy: pruned gradients and weights stay exactly zero through any optimizer.

`MaskPolicy` wraps `utils.sparsity.HeldMasks` in the loop's events. Fixed masks (a sparse upstream's zeros)
use it as is; the pruning modifiers (GMP, AC/DC, constant) subclass it and only say when and how the
masks change (`masks_for_step`).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from policies.base import Policy, TrainState
from utils.errors import UserError
from utils.sparsity import HeldMasks

log = logging.getLogger(__name__)

MaskChange = tuple[Any, "dict[str, torch.Tensor] | None"]


class MaskPolicy(Policy):
    """Holds masks over `param_names`; `masks_for_step` may change them right after any optimizer step.

    Subclasses set `param_names` (and may set `masks`, `applied`) before FIT_START.
    """

    name = "masks"
    param_names: list[str]
    masks: dict[str, torch.Tensor] | None = None   # the masks held (or to hold at FIT_START)
    applied: Any = None                             # marker of the schedule point the masks belong to
    held: HeldMasks | None = None

    def masks_for_step(self, step: int, state: TrainState) -> MaskChange | None:
        """(marker, masks or None) when the schedule point at `step` differs from `self.applied`, else None."""
        return None

    def releases_after(self, step: int) -> bool:
        """True when the masks stop being enforced right after optimizer step `step` (not even re-applied)."""
        return False

    def _update(self, state: TrainState) -> None:
        change = self.masks_for_step(state.step, state)
        if change is not None:
            self.applied, masks = change
            self.held.set_(masks)
            self.masks = self.held.masks

    @property
    def held_params(self) -> dict[str, torch.Tensor]:
        return self.held.params

    def on_fit_start(self, state: TrainState) -> None:
        named = dict(state.model.named_parameters())
        missing = sorted(set(self.param_names) - set(named))
        assert not missing, f"{self.name}: masks for parameters the model lacks: {missing[:5]}"
        self.held = HeldMasks({n: named[n] for n in self.param_names}, self.masks)
        self.masks = self.held.masks
        self._update(state)

    def on_after_backward(self, state: TrainState) -> None:
        self.held.zero_grads_()

    def on_after_optimizer_step(self, state: TrainState) -> None:
        if not self.releases_after(state.step - 1):
            self.held.zero_weights_()
        self._update(state)

    def on_fit_end(self, state: TrainState) -> None:
        bad = self.held.violations()
        if bad:
            raise UserError(f"{self.name}: masked weights became nonzero in {bad[:5]}: this is a bug, please report it")

    def state_dict(self) -> dict[str, Any]:
        masks = self.held.state_dict() if self.held is not None else self.masks
        return {"masks": masks, "applied": self.applied}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.masks, self.applied = state["masks"], state.get("applied")
            if self.held is not None:
                self.held.set_(self.masks)


class FixedMaskPolicy(MaskPolicy):
    """The loaded zeros, held fixed for the whole run (sparse fine-tuning)."""

    name = "fixed_mask"

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.param_names = list(masks)
        self.masks = masks
