"""AC/DC (Peste et al., 2021): alternating dense and compressed phases, ending compressed -- as SparseML runs it.

The masks update at start_epoch, every `update_frequency` epochs after, and at end_epoch (SparseML's clock).
At each update SparseML decides from the epoch alone: phase `floor((epoch - start) / update_frequency)`;
the phase is dense when that number is even **and** the epoch is before `end_epoch - update_frequency`,
otherwise compressed (fresh magnitude masks at `compression_sparsity`). So the last phase is always
compressed, whatever the span, and the end update prunes once more. Epochs must be whole numbers (SparseML's
rule). After the first optimizer step of a dense phase that follows a compressed one, SGD's momentum
buffers are zeroed (they hold momentum of weights that were pinned at zero).
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
from pydantic import Field
from torch import nn

from policies.base import TrainState
from policies.modifiers.base import MODIFIERS, ModifierArgs, check_fraction
from policies.modifiers.pruning import MaskingModifier
from utils.errors import UserError
from utils.sparsity import make_masks, parse_mask_type

log = logging.getLogger(__name__)


def acdc_phase(epoch: float, *, start_epoch: float, end_epoch: float, update_frequency: float) -> tuple[int, bool]:
    """(phase number, compressed?) SparseML assigns to an update at `epoch`."""
    phase = math.floor((epoch - start_epoch) / update_frequency)
    dense = phase % 2 == 0 and end_epoch - update_frequency > epoch
    return phase, not dense


def reset_momentum_(optimizer: torch.optim.Optimizer) -> None:
    """Zero SGD's momentum buffers (SparseML resets `momentum_buffer` only)."""
    for param_state in optimizer.state.values():
        if torch.is_tensor(param_state.get("momentum_buffer")):
            param_state["momentum_buffer"].zero_()


@MODIFIERS.register("ACDCPruningModifier")
class ACDCPruningModifier(MaskingModifier):
    """Alternating Compressed/DeCompressed training; see the module docstring."""

    method = "AC/DC"

    class Args(ModifierArgs):
        compression_sparsity: float
        start_epoch: float
        end_epoch: float
        update_frequency: float = Field(gt=0)
        params: str | list[str]
        global_sparsity: bool = True
        leave_enabled: bool = True
        momentum_buffer_reset: bool = True
        mask_type: str | list[int] = "unstructured"

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        a = self.args
        for key in ("start_epoch", "end_epoch", "update_frequency"):
            if not float(getattr(a, key)).is_integer():
                raise UserError(f"{self.source}: AC/DC needs whole-number epochs (as SparseML requires); "
                                f"{key} is {getattr(a, key)}")
        self.sparsity = check_fraction(a.compression_sparsity, "compression_sparsity", source=self.source)
        if self.sparsity == 0:
            log.warning("%s: compression_sparsity is 0: this modifier prunes nothing", self.source)
        try:
            self.mask_type = parse_mask_type(a.mask_type)
        except ValueError as err:
            raise UserError(f"{self.source}: {err}") from None
        if a.end_epoch <= max(a.start_epoch, 0.0):
            raise UserError(f"{self.source}: AC/DC needs end_epoch > start_epoch, got {a.start_epoch}..{a.end_epoch}")
        self.update_frequency = a.update_frequency
        self.momentum_empty = True        # no compressed phase yet: nothing to reset
        self.reset_pending = False        # reset after the next optimizer step (the first of a dense phase)

    def phase_at(self, step: int) -> tuple[int, bool]:
        a = self.args
        return acdc_phase(self.epoch_at(step), start_epoch=a.start_epoch, end_epoch=a.end_epoch,
                          update_frequency=a.update_frequency)

    def phases(self) -> list[tuple[int, str]]:
        """(update step, 'dense' | 'compressed') of every update of a run of `total_steps` (after FIT_START)."""
        return [(s, "compressed" if self.phase_at(s)[1] else "dense") for s in sorted(self.updates)]

    def compute_masks(self, step: int, state: TrainState):
        if not self.phase_at(step)[1]:
            self.reset_pending = self.args.momentum_buffer_reset and not self.momentum_empty
            return None
        self.momentum_empty = False
        try:
            return make_masks(self.held_params, self.sparsity, mask_type=self.mask_type,
                              global_scope=self.args.global_sparsity)
        except ValueError as err:
            raise UserError(f"{self.source}: {err}") from None

    def on_after_optimizer_step(self, state: TrainState) -> None:
        if self.reset_pending:
            reset_momentum_(state.optimizer)
            self.reset_pending, self.momentum_empty = False, True
        super().on_after_optimizer_step(state)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "momentum_empty": self.momentum_empty, "reset_pending": self.reset_pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state:
            self.momentum_empty = state.get("momentum_empty", True)
            self.reset_pending = state.get("reset_pending", False)
