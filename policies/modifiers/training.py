"""Epoch range, learning-rate and weight-decay modifiers, and the one policy that applies them.

SparseML's LR and weight-decay modifiers write into the optimizer's param groups when they update, one
after the other in its manager's order (`Modifier.order`), and the values stay until the next write: a
`Set*` modifier writes once at its start, a function modifier on every step from its start to its end
(inclusive), a torch-style scheduler multiplies the current value at its milestones (so it chains with
whatever another modifier set). `RecipeSchedule` replays those writes once per run, as a pure function of
the step (a table of values per step and param group), and sets them before every batch.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Iterable, Literal

import numpy as np
from pydantic import Field

from policies.base import Phase, Policy, TrainState
from policies.modifiers import clock
from policies.modifiers.base import MODIFIERS, Modifier, ModifierArgs
from utils.errors import UserError

KEYS = ("lr", "weight_decay")
Groups = list[dict[str, float]]   # per param group: {"lr": ..., "weight_decay": ...}


@MODIFIERS.register("EpochRangeModifier")
class EpochRangeModifier(Modifier):
    """Only shapes how long the recipe trains (its start and end count like any modifier's)."""
    phase = Phase.SCHEDULE

    acts = False

    class Args(ModifierArgs):
        start_epoch: float = 0.0
        end_epoch: float


class ScheduleWriter(Modifier):
    """A modifier that writes optimizer hyper-parameters into some param groups when it updates."""
    phase = Phase.SCHEDULE

    key: ClassVar[str] = "lr"

    @property
    def param_groups(self) -> list[int] | None:
        return getattr(self.args, "param_groups", None)

    def targets(self, groups: Groups) -> list[dict[str, float]]:
        chosen = self.param_groups
        return [g for i, g in enumerate(groups) if not chosen or i in chosen]

    def update_steps(self, total_steps: int) -> Iterable[int]:
        """Where it writes: every step from start to end, both included (SparseML's update frequency -1)."""
        return clock.update_steps(start_epoch=self.args.start_epoch, end_epoch=self.args.end_epoch,
                                  update_frequency=-1, steps_per_epoch=self.steps_per_epoch, total_steps=total_steps)

    def reset(self) -> None:
        """Forget what a previous replay left (schedulers keep state between writes)."""

    def write(self, step: int, groups: Groups) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SetArgs(ModifierArgs):
    param_groups: list[int] | None = None
    constant_logging: bool = False


@MODIFIERS.register("SetLearningRateModifier")
class SetLearningRateModifier(ScheduleWriter):
    """Sets the LR once, at start_epoch. SparseML ignores end_epoch (it never ends), so on a step where it
    and another writer both act, its value stands."""

    class Args(SetArgs):
        learning_rate: float = Field(ge=0)

    @property
    def value(self) -> float:
        return self.args.learning_rate

    @property
    def order(self) -> tuple:
        return clock.manager_order(-1, self.args.start_epoch, self.position)

    @classmethod
    def epochs_counted(cls, args: ModifierArgs) -> list[float]:
        return [args.start_epoch] if args.start_epoch > -1 else []

    def update_steps(self, total_steps: int) -> Iterable[int]:
        return [self.start_step] if self.start_step < total_steps else []

    def write(self, step: int, groups: Groups) -> None:
        for group in self.targets(groups):
            group[self.key] = self.value


@MODIFIERS.register("SetWeightDecayModifier")
class SetWeightDecayModifier(SetLearningRateModifier):
    """Sets the weight decay once, at start_epoch (end_epoch is unused, as in SparseML)."""

    key = "weight_decay"

    class Args(SetArgs):
        weight_decay: float = Field(ge=0)

    @property
    def value(self) -> float:
        return self.args.weight_decay


def check_lr(value: float, what: str, *, source: str) -> None:
    """SparseML's validation of function LRs: within [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{source}: {what} must be within [0.0, 1.0] (as SparseML requires), got {value}")


def check_no_frequency(args: Any, *, source: str) -> None:
    if args.update_frequency != -1.0:
        raise UserError(f"{source}: update_frequency must be kept at -1 (the LR updates every step), "
                        f"got {args.update_frequency}")


@MODIFIERS.register("LearningRateFunctionModifier")
class LearningRateFunctionModifier(ScheduleWriter):
    """linear, cosine or cyclic_linear from init_lr to final_lr over [start_epoch, end_epoch], written on every
    step of that range with the step's epoch (its end step writes the value at end_epoch, final_lr)."""

    class Args(ModifierArgs):
        lr_func: Literal["linear", "cosine", "cyclic_linear"]
        init_lr: float
        final_lr: float
        start_epoch: float
        end_epoch: float
        cycle_epochs: float = 1.0
        param_groups: list[int] | None = None
        update_frequency: float = -1.0
        constant_logging: bool = False

    def setup(self, model) -> None:
        a = self.args
        check_lr(a.init_lr, "init_lr", source=self.source)
        check_lr(a.final_lr, "final_lr", source=self.source)
        check_no_frequency(a, source=self.source)
        if a.end_epoch <= max(a.start_epoch, 0.0):
            raise UserError(f"{self.source}: LearningRateFunctionModifier needs end_epoch > start_epoch, "
                            f"got {a.start_epoch}..{a.end_epoch}")
        if a.lr_func == "cyclic_linear" and a.cycle_epochs * self.steps_per_epoch <= 1:
            raise UserError(f"{self.source}: cycle_epochs must span more than one step, got {a.cycle_epochs}")

    def value_at(self, epoch: float) -> float:
        """SparseML's formulas, with the epoch SparseML passes at the step."""
        a = self.args
        start, end = max(a.start_epoch, 0.0), a.end_epoch
        if a.lr_func == "linear":
            return a.init_lr + ((epoch - start) / (end - start)) * (a.final_lr - a.init_lr)
        if a.lr_func == "cosine":
            x = (epoch - start) / (end - start)
            low, high = sorted((a.init_lr, a.final_lr))
            shift = 0.0 if a.final_lr < a.init_lr else math.pi
            return math.cos(x * math.pi + shift) * (high - low) / 2 + (high - low) / 2 + low
        spe = self.steps_per_epoch
        end_step, start_step, cycle = a.end_epoch * spe, a.start_epoch * spe, a.cycle_epochs * spe
        current = (epoch - a.start_epoch) * spe
        if current > int((end_step - start_step) / cycle) * cycle:
            cycle = (end_step - start_step) % cycle
        return a.init_lr - (current % cycle / (cycle - 1)) * (a.init_lr - a.final_lr)

    def write(self, step: int, groups: Groups) -> None:
        value = self.value_at(self.epoch_at(step))
        for group in self.targets(groups):
            group["lr"] = value


def replay(writers: list[ScheduleWriter], *, initial: Groups, total_steps: int) -> np.ndarray:
    """Values in force at each step: array (steps, param groups, 2) of (lr, weight_decay)."""
    events: dict[int, list[ScheduleWriter]] = {}
    for writer in sorted(writers, key=lambda w: w.order):
        writer.reset()
        for step in writer.update_steps(total_steps):
            events.setdefault(step, []).append(writer)
    groups = [dict(g) for g in initial]
    table = np.empty((total_steps, len(groups), len(KEYS)))
    for step in range(total_steps):
        for writer in events.get(step, ()):
            writer.write(step, groups)
        table[step] = [[g[k] for k in KEYS] for g in groups]
    return table


class RecipeSchedule(Policy):
    """Sets every param group's LR and weight decay from the recipe's writers before each batch."""
    phase = Phase.SCHEDULE

    name = "recipe.schedule"

    def __init__(self, writers: list[ScheduleWriter]):
        self.writers = writers
        self.table: np.ndarray | None = None

    def on_fit_start(self, state: TrainState) -> None:
        groups = state.optimizer.param_groups
        for w in self.writers:
            bad = [g for g in (w.param_groups or []) if not 0 <= g < len(groups)]
            if bad:
                raise UserError(f"{w.source}: param_groups {bad} do not exist; the optimizer has {len(groups)} "
                                f"group(s) (0..{len(groups) - 1})")
        # The trainer config's values stand until a writer acts; kept in the groups, so a resumed run has them.
        initial = [{k: g.setdefault(f"initial_{k}", g[k]) for k in KEYS} for g in groups]
        self.table = replay(self.writers, initial=initial, total_steps=max(state.total_steps, 1))

    def value_at(self, step: int, key: str, group: int) -> float:
        """The value the recipe gives `key` ('lr' or 'weight_decay') of param group `group` at `step`."""
        assert self.table is not None, "on_fit_start first"
        return float(self.table[min(step, len(self.table) - 1), group, KEYS.index(key)])

    def facts(self) -> dict[str, Any]:
        return {"hyper": self.used()} if self.table is not None else {}

    def used(self) -> dict[str, float]:
        """What the run trained with, for its records: param group 0's LR at the first step and at its peak, and
        the largest weight decay any group had (YOLO's first groups are BN weights and biases, undecayed)."""
        assert self.table is not None, "on_fit_start first"
        lr = self.table[:, 0, KEYS.index("lr")]
        return {"lr_initial": float(lr[0]), "lr_peak": float(lr.max()),
                "weight_decay": float(self.table[:, :, KEYS.index("weight_decay")].max())}

    def on_batch_start(self, state: TrainState) -> None:
        row = self.table[min(state.step, len(self.table) - 1)]
        for index, group in enumerate(state.optimizer.param_groups):
            group["lr"], group["weight_decay"] = float(row[index, 0]), float(row[index, 1])
        state.metrics["lr"] = state.optimizer.param_groups[0]["lr"]
