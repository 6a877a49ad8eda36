"""Pruning modifiers: constant masks, gradual magnitude pruning (GMP) and its global/magnitude aliases.

They act on SparseML's clock (`policies.modifiers.clock`): masks change at the modifier's update steps --
its start, then every `update_frequency` epochs after the previous update (-1: every step), and its end --
with the sparsity SparseML's interpolation gives for the epoch of that step. A new mask holds from the
step it is computed for (pruned gradients are zeroed after backward, pruned weights re-zeroed after each
optimizer step). With `leave_enabled: false` the masks are dropped after the end step.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Literal

from pydantic import Field
from torch import nn

from policies.base import TrainState
from policies.masking import MaskPolicy
from policies.modifiers import clock
from policies.modifiers.base import MODIFIERS, Modifier, ModifierArgs, check_fraction
from policies.modifiers.params import resolve_params
from utils.errors import UserError
from utils.sparsity import make_masks, masks_from_zeros, parse_mask_type, sparsity

log = logging.getLogger(__name__)

INTER_FUNCS = ("linear", "cubic", "inverse_cubic")
FROM_PARAM = "__FROM_PARAM__"


def interpolate(x: float, x0: float, x1: float, y0: float, y1: float, inter_func: str) -> float:
    """SparseML's interpolation of y over [x0, x1]: cubic = 1-(1-t)^3 (fast start), inverse_cubic =
    1-(1-t)^(1/3). t is capped at 1 (past x1 SparseML's inverse_cubic would take a complex root)."""
    t = min((x - x0) / (x1 - x0), 1.0) if x1 != x0 else 1.0
    if inter_func == "linear":
        y = t
    elif inter_func == "cubic":
        y = 1 - (1 - t) ** 3
    else:
        y = 1 - (1 - t) ** (1 / 3)
    if y <= 0.0 + sys.float_info.epsilon:
        return y0
    if y >= 1.0 - sys.float_info.epsilon:
        return y1
    return y * (y1 - y0) + y0


class MaskingModifier(MaskPolicy, Modifier):
    """A recipe modifier holding masks over its `params` (policies.masking); subclasses say when they change.

    Masks are recomputed at the update steps (`is_update`), listed at FIT_START when the run's length is known.
    """

    update_frequency: float = -1.0

    def setup(self, model: nn.Module) -> None:
        self.param_names = resolve_params(model, self.args.params, source=self.source)
        if not self.param_names:
            raise UserError(f"{self.source}: 'params' selects no parameters")

    def on_fit_start(self, state: TrainState) -> None:
        self.plan(state.total_steps)
        super().on_fit_start(state)

    def plan(self, total_steps: int) -> None:
        """List the update steps of a run of `total_steps` (with frequency -1 every step from start to end
        updates: nothing to list)."""
        if self.update_frequency != -1:
            self.updates = set(clock.update_steps(
                start_epoch=self.args.start_epoch, end_epoch=self.args.end_epoch,
                update_frequency=self.update_frequency, steps_per_epoch=self.steps_per_epoch,
                total_steps=total_steps))

    def is_update(self, step: int) -> bool:
        if self.update_frequency == -1:
            return step >= self.start_step and (self.end_step is None or step <= self.end_step)
        return step in self.updates

    def releases_after(self, step: int) -> bool:
        """SparseML drops the masks at the end step unless leave_enabled (they are not re-applied after it)."""
        return not getattr(self.args, "leave_enabled", True) and step == self.end_step

    def masks_for_step(self, step: int, state: TrainState):
        if self.end_step is not None and step > self.end_step and not getattr(self.args, "leave_enabled", True):
            return None if self.applied == "released" else ("released", None)
        if not self.is_update(step) or self.applied == step:
            return None
        return step, self.compute_masks(step, state)

    def compute_masks(self, step: int, state: TrainState):  # pragma: no cover - abstract
        raise NotImplementedError

    def current_sparsity(self) -> dict[str, float]:
        return {n: float((p == 0).float().mean()) for n, p in self.held_params.items()}


@MODIFIERS.register("ConstantPruningModifier")
class ConstantPruningModifier(MaskingModifier):
    """mask = the nonzeros (taken at start_epoch), held through end_epoch (-1: to the end), then dropped, as
    SparseML's constant pruning does (it recomputes the nonzeros every step, which keeps the same pattern)."""

    class Args(ModifierArgs):
        params: str | list[str]
        update_frequency: float = -1.0

    def releases_after(self, step: int) -> bool:
        return step == self.end_step

    def masks_for_step(self, step: int, state: TrainState):
        if self.end_step is not None and step > self.end_step:
            return None if self.applied in (None, "released") else ("released", None)
        if step >= self.start_step and self.applied is None:
            masks = masks_from_zeros(self.held_params)
            if all(bool(m.all()) for m in masks.values()):
                log.warning("%s: the selected params hold no zeros: there is no sparsity to keep", self.source)
            return "held", masks
        return None


class GMPArgs(ModifierArgs):
    init_sparsity: float | Literal["__FROM_PARAM__"] = 0.05
    final_sparsity: float | dict[Any, Any]
    start_epoch: float
    end_epoch: float
    update_frequency: float = Field(default=1.0)
    params: str | list[str] | None = None
    leave_enabled: bool = True
    inter_func: Literal["linear", "cubic", "inverse_cubic"] = "cubic"
    mask_type: str | list[int] = "unstructured"
    global_sparsity: bool = False
    phased: Literal[False] = False                 # deprecated in SparseML; only its default is accepted
    score_type: Literal["magnitude"] = "magnitude"  # deprecated in SparseML; only its default is accepted


@MODIFIERS.register("GMPruningModifier")
class GMPruningModifier(MaskingModifier):
    """Gradual magnitude pruning from init_sparsity to final_sparsity over [start_epoch, end_epoch]."""

    Args = GMPArgs
    force_global: bool | None = None
    method = "GMP"

    def setup(self, model: nn.Module) -> None:
        a = self.args
        self.final = self._final_sparsities(model)
        by_mapping = isinstance(self.final, dict) and (a.params is None or a.params == [])
        if a.params is None and not isinstance(a.final_sparsity, dict):
            raise UserError(f"{self.source}: 'params' is required unless final_sparsity maps sparsities to params")
        if by_mapping:
            self.param_names = list(self.final)
        else:
            super().setup(model)
        if isinstance(self.final, dict):
            missing = [n for n in self.param_names if n not in self.final]
            if missing:
                raise UserError(f"{self.source}: final_sparsity gives no value for {missing[:3]}")
        self.init = self._init_sparsities(model)
        self.global_scope = a.global_sparsity if self.force_global is None else self.force_global
        if self.global_scope and (isinstance(self.final, dict) or isinstance(self.init, dict)):
            raise UserError(f"{self.source}: global pruning needs one init and final sparsity, not per-layer values")
        try:
            self.mask_type = parse_mask_type(a.mask_type)
        except ValueError as err:
            raise UserError(f"{self.source}: {err}") from None
        if self.end_step is None or a.end_epoch < max(a.start_epoch, 0.0):
            raise UserError(f"{self.source}: GMP needs end_epoch >= start_epoch")
        if a.update_frequency <= 0 and a.update_frequency != -1:
            raise UserError(f"{self.source}: update_frequency must be > 0, or -1 for every step; got "
                            f"{a.update_frequency}")
        self.update_frequency = a.update_frequency
        finals = self.final.values() if isinstance(self.final, dict) else [self.final]
        if all(f == 0 for f in finals):
            log.warning("%s: final_sparsity is 0: this modifier prunes nothing", self.source)

    def _init_sparsities(self, model: nn.Module) -> float | dict[str, float]:
        """init_sparsity, or with __FROM_PARAM__ each parameter's sparsity when the recipe is built."""
        if self.args.init_sparsity != FROM_PARAM:
            return check_fraction(self.args.init_sparsity, "init_sparsity", source=self.source)
        named = dict(model.named_parameters())
        return {n: sparsity(named[n].detach()) for n in self.param_names}

    def _final_sparsities(self, model: nn.Module) -> float | dict[str, float]:
        final = self.args.final_sparsity
        if not isinstance(final, dict):
            return check_fraction(final, "final_sparsity", source=self.source)
        out: dict[str, float] = {}
        for key, value in final.items():
            # SparseML writes {sparsity: [params]}; {param: sparsity} is accepted too.
            sparsity_value, names = (key, value) if isinstance(key, (int, float)) else (value, [key])
            sparsity_value = check_fraction(sparsity_value, f"final_sparsity[{key!r}]", source=self.source)
            for name in resolve_params(model, names if isinstance(names, list) else [names], source=self.source):
                out[name] = sparsity_value
        return out

    def sparsity_at(self, step: int) -> float | dict[str, float]:
        """The target SparseML applies at an update on `step`: interpolated at that step's epoch."""
        a, epoch = self.args, self.epoch_at(step)

        def value(init: float, final: float) -> float:
            return interpolate(epoch, a.start_epoch, a.end_epoch, init, final, a.inter_func)

        if not isinstance(self.final, dict) and not isinstance(self.init, dict):
            return value(self.init, self.final)
        return {n: value(self.init[n] if isinstance(self.init, dict) else self.init,
                         self.final[n] if isinstance(self.final, dict) else self.final) for n in self.param_names}

    def compute_masks(self, step: int, state: TrainState):
        target = self.sparsity_at(step)
        try:
            masks = make_masks(self.held_params, target, mask_type=self.mask_type, global_scope=self.global_scope)
        except ValueError as err:
            raise UserError(f"{self.source}: {err}") from None
        log.debug("%s: step %d sparsity %s", self.name, step, target)
        return masks


@MODIFIERS.register("MagnitudePruningModifier")
class MagnitudePruningModifier(GMPruningModifier):
    """SparseML's newer name for GMP (per-layer unless global_sparsity: true)."""


@MODIFIERS.register("GlobalMagnitudePruningModifier")
class GlobalMagnitudePruningModifier(GMPruningModifier):
    """GMP with one magnitude threshold across all params."""

    class Args(GMPArgs):
        global_sparsity: bool = True

    force_global = True
