"""Epoch range, learning-rate and weight-decay modifiers, and the one policy that applies them.

Each LR/WD modifier is a pure function of the step. Where several cover a step, the one that wrote last
wins, as in SparseML's sequential updates: a `Set*` modifier writes once at its start, a function or
scheduler modifier on every step of its range; ties go to the later start, then to recipe order.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import Field

from policies.base import Policy, TrainState
from policies.modifiers.base import MODIFIERS, Modifier, ModifierArgs
from utils.errors import UserError


@MODIFIERS.register("EpochRangeModifier")
class EpochRangeModifier(Modifier):
    """Only sets how long the recipe trains: its end_epoch (the largest one wins)."""

    class Args(ModifierArgs):
        start_epoch: float = 0.0
        end_epoch: float


class ScheduleWriter(Modifier):
    """A modifier that writes one optimizer hyper-parameter (`key`) into some param groups."""

    key: ClassVar[str] = "lr"

    @property
    def param_groups(self) -> list[int] | None:
        return getattr(self.args, "param_groups", None)

    def last_write(self, step: int) -> int | None:
        """The last step <= `step` at which this modifier writes, or None if it has not yet."""
        if step < self.start_step:
            return None
        if self.end_step is None or self.end_step <= self.start_step:
            return step
        return min(step, self.end_step - 1)

    def value_at(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


class SetArgs(ModifierArgs):
    param_groups: list[int] | None = None
    constant_logging: bool = False


@MODIFIERS.register("SetLearningRateModifier")
class SetLearningRateModifier(ScheduleWriter):
    """Sets the LR once at start_epoch (end_epoch is unused, as in SparseML)."""

    class Args(SetArgs):
        learning_rate: float = Field(ge=0)

    def last_write(self, step: int) -> int | None:
        return self.start_step if step >= self.start_step else None

    def value_at(self, step: int) -> float:
        return self.args.learning_rate

    @property
    def last_epoch(self) -> float:
        return max(self.args.start_epoch, 0.0)


@MODIFIERS.register("SetWeightDecayModifier")
class SetWeightDecayModifier(SetLearningRateModifier):
    """Sets the weight decay once at start_epoch (end_epoch is unused, as in SparseML)."""

    key = "weight_decay"

    class Args(SetArgs):
        weight_decay: float = Field(ge=0)

    def value_at(self, step: int) -> float:
        return self.args.weight_decay


def _interpolate(fraction: float, init: float, final: float, func: str) -> float:
    if func == "linear":
        return init + (final - init) * fraction
    return final + 0.5 * (init - final) * (1 + math.cos(math.pi * fraction))


@MODIFIERS.register("LearningRateFunctionModifier")
class LearningRateFunctionModifier(ScheduleWriter):
    """Linear or cosine from init_lr to final_lr over [start_epoch, end_epoch), step by step."""

    class Args(ModifierArgs):
        lr_func: Literal["linear", "cosine"]
        init_lr: float = Field(ge=0)
        final_lr: float = Field(ge=0)
        start_epoch: float
        end_epoch: float
        param_groups: list[int] | None = None
        update_frequency: float = -1.0
        constant_logging: bool = False

    def setup(self, model) -> None:
        if self.end_step is None or self.end_step <= self.start_step:
            raise UserError(f"{self.source}: LearningRateFunctionModifier needs end_epoch > start_epoch, "
                            f"got {self.args.start_epoch}..{self.args.end_epoch}")

    def value_at(self, step: int) -> float:
        fraction = (step - self.start_step) / (self.end_step - self.start_step)
        return _interpolate(min(max(fraction, 0.0), 1.0), self.args.init_lr, self.args.final_lr, self.args.lr_func)


@MODIFIERS.register("LearningRateModifier")
class LearningRateModifier(ScheduleWriter):
    """torch-style StepLR / MultiStepLR / ExponentialLR from init_lr; epochs in lr_kwargs, milestones absolute."""

    class Args(ModifierArgs):
        lr_class: Literal["StepLR", "MultiStepLR", "ExponentialLR"]
        lr_kwargs: dict[str, Any] = Field(default_factory=dict)
        init_lr: float = Field(ge=0)
        start_epoch: float
        param_groups: list[int] | None = None
        update_frequency: float = -1.0
        constant_logging: bool = False

    KWARGS: ClassVar[dict[str, set[str]]] = {"StepLR": {"step_size", "gamma"}, "MultiStepLR": {"milestones", "gamma"},
                                             "ExponentialLR": {"gamma"}}

    def setup(self, model) -> None:
        allowed = self.KWARGS[self.args.lr_class]
        unknown = sorted(set(self.args.lr_kwargs) - allowed)
        if unknown or "gamma" not in self.args.lr_kwargs:
            raise UserError(f"{self.source}: lr_kwargs for {self.args.lr_class} take {sorted(allowed)} "
                            f"(gamma required); got {sorted(self.args.lr_kwargs)}")
        kw = self.args.lr_kwargs
        if self.args.lr_class == "StepLR":
            self.step_size = max(1, self.to_step(float(kw["step_size"])))
        elif self.args.lr_class == "MultiStepLR":
            self.milestones = sorted(self.to_step(float(m)) for m in kw["milestones"])

    def value_at(self, step: int) -> float:
        gamma = float(self.args.lr_kwargs["gamma"])
        done = step - self.start_step
        if self.args.lr_class == "StepLR":
            n = done // self.step_size
        elif self.args.lr_class == "MultiStepLR":
            n = sum(step >= m for m in self.milestones)
        else:
            n = done // self.steps_per_epoch
        return self.args.init_lr * gamma ** n


class RecipeSchedule(Policy):
    """Sets every param group's LR and weight decay from the recipe's writers before each batch."""

    name = "recipe.schedule"

    def __init__(self, writers: list[ScheduleWriter]):
        self.writers = writers

    def value_at(self, step: int, key: str, group: int) -> float | None:
        """The value the recipe gives `key` ('lr' or 'weight_decay') of param group `group` at `step`."""
        best, best_rank = None, None
        for order, w in enumerate(self.writers):
            if w.key != key or (w.param_groups is not None and group not in w.param_groups):
                continue
            last = w.last_write(step)
            if last is None:
                continue
            rank = (last, w.start_step, order)
            if best_rank is None or rank > best_rank:
                best, best_rank = w, rank
        return None if best is None else best.value_at(best_rank[0])

    def on_fit_start(self, state: TrainState) -> None:
        count = len(state.optimizer.param_groups)
        for w in self.writers:
            bad = [g for g in (w.param_groups or []) if not 0 <= g < count]
            if bad:
                raise UserError(f"{w.source}: param_groups {bad} do not exist; the optimizer has {count} "
                                f"group(s) (0..{count - 1})")

    def on_batch_start(self, state: TrainState) -> None:
        for index, group in enumerate(state.optimizer.param_groups):
            for key in ("lr", "weight_decay"):
                # Before any writer starts, the trainer config's value stands (kept once, resumable).
                initial = group.setdefault(f"initial_{key}", group[key])
                value = self.value_at(state.step, key, index)
                group[key] = initial if value is None else value
        state.metrics["lr"] = state.optimizer.param_groups[0]["lr"]
