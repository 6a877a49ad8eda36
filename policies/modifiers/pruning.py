"""Pruning modifiers: constant masks, gradual magnitude pruning (GMP) and its global/magnitude aliases.

Masks change only at update points, right after an optimizer step, so the mask for step s is applied before
step s runs and the final sparsity lands on the last optimizer step (`end_epoch` converted once to steps).
Between updates masked gradients are zeroed after backward and masked weights re-zeroed after each step.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Literal

from pydantic import Field
from torch import nn

from policies.masking import MaskPolicy
from policies.modifiers.base import MODIFIERS, Modifier, ModifierArgs, check_fraction
from policies.modifiers.params import resolve_params
from utils.errors import UserError
from utils.sparsity import make_masks, masks_from_zeros, parse_mask_type

log = logging.getLogger(__name__)

INTER_FUNCS = ("linear", "cubic", "inverse_cubic")


def interpolate_sparsity(fraction: float, init: float, final: float, inter_func: str) -> float:
    """SparseML's interpolation: cubic = 1-(1-x)^3 (fast start), inverse_cubic = 1-(1-x)^(1/3)."""
    x = min(max(fraction, 0.0), 1.0)
    if inter_func == "linear":
        y = x
    elif inter_func == "cubic":
        y = 1 - (1 - x) ** 3
    else:
        y = 1 - (1 - x) ** (1 / 3)
    if y <= sys.float_info.epsilon:
        return init
    if y >= 1 - sys.float_info.epsilon:
        return final
    return init + (final - init) * y


class MaskingModifier(MaskPolicy, Modifier):
    """A recipe modifier holding masks over its `params` (policies.masking); subclasses say when they change."""

    def setup(self, model: nn.Module) -> None:
        self.param_names = resolve_params(model, self.args.params, source=self.source)
        if not self.param_names:
            raise UserError(f"{self.source}: 'params' selects no parameters")

    def current_sparsity(self) -> dict[str, float]:
        return {n: float((p == 0).float().mean()) for n, p in self.held_params.items()}


@MODIFIERS.register("ConstantPruningModifier")
class ConstantPruningModifier(MaskingModifier):
    """mask = the nonzeros at start_epoch, held until end_epoch (-1: to the end): sparse transfer."""

    class Args(ModifierArgs):
        params: str | list[str]
        log_types: Any = None

    def masks_for_step(self, step, state):
        inside = step >= self.start_step and (self.end_step is None or step < self.end_step)
        if inside and self.applied != "held":
            return "held", masks_from_zeros(self.held_params)
        if not inside and step >= self.start_step and self.applied == "held":
            return "released", None
        return None


class GMPArgs(ModifierArgs):
    init_sparsity: float = 0.05
    final_sparsity: float | dict[Any, Any]
    start_epoch: float
    end_epoch: float
    update_frequency: float = Field(default=1.0)
    params: str | list[str] | None = None
    leave_enabled: bool = True
    inter_func: Literal["linear", "cubic", "inverse_cubic"] = "cubic"
    mask_type: str | list[int] = "unstructured"
    global_sparsity: bool = False
    log_types: Any = None


@MODIFIERS.register("GMPruningModifier")
class GMPruningModifier(MaskingModifier):
    """Gradual magnitude pruning from init_sparsity to final_sparsity over [start_epoch, end_epoch]."""

    Args = GMPArgs
    force_global: bool | None = None

    def setup(self, model: nn.Module) -> None:
        a = self.args
        self.final = self._final_sparsities(model)
        if a.params is None and not isinstance(a.final_sparsity, dict):
            raise UserError(f"{self.source}: 'params' is required unless final_sparsity maps sparsities to params")
        if a.params is not None:
            super().setup(model)
        else:
            self.param_names = list(self.final)
        if isinstance(self.final, dict):
            missing = [n for n in self.param_names if n not in self.final]
            if missing:
                raise UserError(f"{self.source}: final_sparsity gives no value for {missing[:3]}")
            self.param_names = [n for n in self.param_names if n in self.final]
        self.init = check_fraction(a.init_sparsity, "init_sparsity", source=self.source)
        self.global_scope = a.global_sparsity if self.force_global is None else self.force_global
        if self.global_scope and isinstance(self.final, dict):
            raise UserError(f"{self.source}: global pruning needs one final_sparsity, not a per-layer mapping")
        try:
            self.mask_type = parse_mask_type(a.mask_type)
        except ValueError as err:
            raise UserError(f"{self.source}: {err}") from None
        if self.end_step is None or self.end_step < self.start_step:
            raise UserError(f"{self.source}: GMP needs end_epoch >= start_epoch")
        self.update_steps = None if a.update_frequency <= 0 else max(1, self.to_step(a.update_frequency))

    def _final_sparsities(self, model: nn.Module) -> float | dict[str, float]:
        final = self.args.final_sparsity
        if not isinstance(final, dict):
            return check_fraction(final, "final_sparsity", source=self.source)
        out: dict[str, float] = {}
        for key, value in final.items():
            # SparseML writes {sparsity: [params]}; {param: sparsity} is accepted too.
            sparsity, names = (key, value) if isinstance(key, (int, float)) else (value, [key])
            sparsity = check_fraction(sparsity, f"final_sparsity[{key!r}]", source=self.source)
            for name in resolve_params(model, names if isinstance(names, list) else [names], source=self.source):
                out[name] = sparsity
        return out

    def update_point(self, step: int) -> int | None:
        """The schedule point whose sparsity holds at `step` (None before start_epoch)."""
        if step < self.start_step:
            return None
        if step >= self.end_step:
            return self.end_step
        if self.update_steps is None:
            return self.start_step
        return self.start_step + (step - self.start_step) // self.update_steps * self.update_steps

    def sparsity_at(self, step: int) -> float | dict[str, float] | None:
        """Target sparsity at `step` (per layer when final_sparsity is a mapping)."""
        point = self.update_point(step)
        if point is None:
            return None
        span = self.end_step - self.start_step
        fraction = 1.0 if span == 0 else (point - self.start_step) / span
        if isinstance(self.final, dict):
            return {n: interpolate_sparsity(fraction, self.init, s, self.args.inter_func)
                    for n, s in self.final.items()}
        return interpolate_sparsity(fraction, self.init, self.final, self.args.inter_func)

    def masks_for_step(self, step, state):
        point = self.update_point(step)
        if point is None:
            return None
        if step > self.end_step and not self.args.leave_enabled:
            return None if self.applied == "released" else ("released", None)
        if point == self.applied:
            return None
        target = self.sparsity_at(step)
        try:
            masks = make_masks(self.held_params, target, mask_type=self.mask_type, global_scope=self.global_scope)
        except ValueError as err:
            raise UserError(f"{self.source}: {err}") from None
        log.debug("%s: step %d sparsity %s", self.name, step, target)
        return point, masks


@MODIFIERS.register("MagnitudePruningModifier")
class MagnitudePruningModifier(GMPruningModifier):
    """SparseML's newer name for GMP (per-layer unless global_sparsity: true)."""


@MODIFIERS.register("GlobalMagnitudePruningModifier")
class GlobalMagnitudePruningModifier(GMPruningModifier):
    """GMP with one magnitude threshold across all params."""

    class Args(GMPArgs):
        global_sparsity: bool = True

    force_global = True
