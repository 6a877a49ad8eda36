"""AC/DC (Peste et al., 2021): alternating dense and compressed phases, ending compressed.

From start_epoch, phases of `update_frequency` epochs alternate dense, compressed, dense, ... A trailing
dense phase before end_epoch is dropped (end_epoch moves back to the end of the last compressed phase, as
SparseML does), so training always leaves AC/DC compressed; with leave_enabled the last masks are then held.
Each compressed phase takes fresh magnitude masks (global or per layer, unstructured/block4/N:M); entering a
dense phase releases the masks and, by default, zeroes the optimizer's momentum (stale for regrown weights).
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

MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")


def acdc_compressed_end_epoch(start_epoch: float, end_epoch: float, update_frequency: float) -> float:
    """end_epoch moved back so the last phase before it is compressed (phase k is compressed when k is odd)."""
    phases = math.ceil((end_epoch - start_epoch) / update_frequency - 1e-9)
    if phases % 2 == 1:
        return start_epoch + (phases - 1) * update_frequency
    return end_epoch


def reset_momentum_(optimizer: torch.optim.Optimizer) -> None:
    """Zero SGD momentum buffers (and Adam's first moments) of every parameter."""
    for param_state in optimizer.state.values():
        for key in MOMENTUM_KEYS:
            if torch.is_tensor(param_state.get(key)):
                param_state[key].zero_()


@MODIFIERS.register("ACDCPruningModifier")
class ACDCPruningModifier(MaskingModifier):
    """Alternating Compressed/DeCompressed training; see the module docstring."""

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
        log_types: Any = None

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        a = self.args
        self.sparsity = check_fraction(a.compression_sparsity, "compression_sparsity", source=self.source)
        try:
            self.mask_type = parse_mask_type(a.mask_type)
        except ValueError as err:
            raise UserError(f"{self.source}: {err}") from None
        start = max(a.start_epoch, 0.0)
        if a.end_epoch <= start:
            raise UserError(f"{self.source}: AC/DC needs end_epoch > start_epoch, got {a.start_epoch}..{a.end_epoch}")
        self.compressed_end_epoch = acdc_compressed_end_epoch(start, a.end_epoch, a.update_frequency)
        if self.compressed_end_epoch != a.end_epoch:
            log.info("%s: the last phase before end_epoch %g would be dense; AC/DC ends compressed at epoch %g",
                     self.source, a.end_epoch, self.compressed_end_epoch)
        count = round((self.compressed_end_epoch - start) / a.update_frequency)
        # Phase k spans [boundaries[k], boundaries[k + 1]); each boundary converted once from epochs.
        self.boundaries = [self.to_step(start + k * a.update_frequency) for k in range(count)]
        self.boundaries.append(self.to_step(self.compressed_end_epoch))

    def phase_at(self, step: int) -> tuple[int, bool] | None:
        """(phase index, compressed?) at `step`; None before start; after the end: (last phase, True)."""
        if step < self.boundaries[0] or len(self.boundaries) < 3:
            return None
        if step >= self.boundaries[-1]:
            return len(self.boundaries) - 2, True
        k = max(i for i, b in enumerate(self.boundaries[:-1]) if b <= step)
        return k, k % 2 == 1

    def phases(self) -> list[tuple[float, float, str]]:
        """[(start_epoch, end_epoch, 'dense' | 'compressed')] of every phase, in epochs."""
        a = self.args
        start = max(a.start_epoch, 0.0)
        edges = [start + k * a.update_frequency for k in range(len(self.boundaries) - 1)] + [self.compressed_end_epoch]
        return [(edges[k], edges[k + 1], "compressed" if k % 2 else "dense") for k in range(len(edges) - 1)]

    def masks_for_step(self, step: int, state: TrainState):
        phase = self.phase_at(step)
        if phase is None:
            return None
        index, compressed = phase
        after_end = step >= self.boundaries[-1]
        if after_end:
            if not self.args.leave_enabled and self.applied != "released":
                return "released", None
            return None
        if phase == self.applied:
            return None
        if not compressed:
            if self.masks is not None and self.args.momentum_buffer_reset:
                reset_momentum_(state.optimizer)
            return phase, None
        try:
            masks = make_masks(self.held_params, self.sparsity, mask_type=self.mask_type,
                               global_scope=self.args.global_sparsity)
        except ValueError as err:
            raise UserError(f"{self.source}: {err}") from None
        return phase, masks

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["applied"] = list(self.applied) if isinstance(self.applied, tuple) else self.applied
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if isinstance(self.applied, list):
            self.applied = tuple(self.applied)

    @property
    def last_epoch(self) -> float:
        return max(self.args.end_epoch, 0.0)
