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
import sys
from collections import Counter
from typing import Any, ClassVar, Iterable, Literal

import numpy as np
from pydantic import Field

from policies.base import Policy, TrainState
from policies.modifiers import clock
from policies.modifiers.base import MODIFIERS, Modifier, ModifierArgs
from utils.errors import UserError

KEYS = ("lr", "weight_decay")
Groups = list[dict[str, float]]   # per param group: {"lr": ..., "weight_decay": ...}


@MODIFIERS.register("EpochRangeModifier")
class EpochRangeModifier(Modifier):
    """Only shapes how long the recipe trains (its start and end count like any modifier's)."""

    acts = False

    class Args(ModifierArgs):
        start_epoch: float = 0.0
        end_epoch: float


class ScheduleWriter(Modifier):
    """A modifier that writes optimizer hyper-parameters into some param groups when it updates."""

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

    @property
    def schedule_epochs(self) -> list[float]:
        return [self.args.start_epoch] if self.args.start_epoch > -1 else []

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


@MODIFIERS.register("LearningRateModifier")
class LearningRateModifier(ScheduleWriter):
    """A torch LR scheduler (StepLR, MultiStepLR, ExponentialLR, CosineAnnealingWarmRestarts) driven the way
    SparseML drives it: init_lr set at the start, then one scheduler step per optimizer step (chainable:
    decays multiply the current LR), epochs in lr_kwargs converted to steps, MultiStepLR milestones counted
    from start_epoch. `param_groups` is this project's addition (SparseML drives every group)."""

    class Args(ModifierArgs):
        lr_class: Literal["StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingWarmRestarts"]
        lr_kwargs: dict[str, Any] = Field(default_factory=dict)
        init_lr: float = Field(ge=0)
        start_epoch: float
        param_groups: list[int] | None = None
        update_frequency: float = -1.0
        constant_logging: bool = False

    KWARGS: ClassVar[dict[str, tuple[set[str], set[str]]]] = {    # (required, optional)
        "StepLR": ({"step_size"}, {"gamma"}), "MultiStepLR": ({"milestones"}, {"gamma"}),
        "ExponentialLR": ({"gamma"}, set()), "CosineAnnealingWarmRestarts": ({"lr_min", "cycle_epochs"}, {"T_mult"})}

    def setup(self, model) -> None:
        a, kw = self.args, self.args.lr_kwargs
        check_no_frequency(a, source=self.source)
        required, optional = self.KWARGS[a.lr_class]
        unknown, missing = sorted(set(kw) - required - optional), sorted(required - set(kw))
        if unknown or missing:
            raise UserError(f"{self.source}: lr_kwargs of {a.lr_class} take {sorted(required)} (required) and "
                            f"{sorted(optional)}; got {sorted(kw)}")
        spe, start, end = self.steps_per_epoch, a.start_epoch, a.end_epoch
        self.gamma = float(kw.get("gamma", 0.1))
        if a.lr_class in ("StepLR", "ExponentialLR"):
            self.step_size = round(float(kw.get("step_size", 1.0)) * spe)
            if self.step_size < 1:
                raise UserError(f"{self.source}: step_size {kw.get('step_size')} epochs is less than one step")
        elif a.lr_class == "MultiStepLR":
            bad = [m for m in kw["milestones"] if m <= start or (end >= 0 and m >= end)]
            if bad:
                raise UserError(f"{self.source}: MultiStepLR milestones {kw['milestones']} must all lie after "
                                f"start_epoch {start}" + (f" and before end_epoch {end}" if end >= 0 else ""))
            self.milestones = Counter(round((m - start) * spe) for m in kw["milestones"])
        else:
            self.t_0, self.t_mult = kw["cycle_epochs"], kw.get("T_mult", 1)
            if not isinstance(self.t_0, int) or self.t_0 <= 0 or not isinstance(self.t_mult, int) or self.t_mult < 1:
                raise UserError(f"{self.source}: cycle_epochs must be a positive integer and T_mult an integer >= 1")
        self.reset()

    def reset(self) -> None:
        self.started = False          # the torch scheduler exists
        self.scheduler_steps = 0      # SparseML's count of scheduler steps taken (it starts at -1 at epoch 0)
        self.last_epoch = 0           # the torch scheduler's last_epoch
        self.base_lrs: list[float] = []

    def write(self, step: int, groups: Groups) -> None:
        targets, epoch, end, spe = self.targets(groups), self.epoch_at(step), self.args.end_epoch, self.steps_per_epoch
        if not self.started and self.args.init_lr:
            for group in targets:
                group["lr"] = self.args.init_lr
        if epoch <= sys.float_info.epsilon:       # no scheduler step before the first optimizer step
            self.scheduler_steps -= 1
            return
        if end >= 0.0 and abs(end - epoch) <= sys.float_info.epsilon:
            return
        if not self.started:
            self.started, self.base_lrs = True, [g["lr"] for g in targets]
            self.scheduler_steps += round(epoch * spe)
        if self.args.lr_class == "CosineAnnealingWarmRestarts":
            self._cosine(targets, epoch - self.args.start_epoch if self.args.start_epoch >= 0.0 else 0.0)
            return
        global_step = round(epoch * spe) if end < 0.0 or epoch <= end else round(end * spe)
        for _ in range(global_step - self.scheduler_steps):
            self._scheduler_step(targets)
        self.scheduler_steps = max(self.scheduler_steps, global_step)

    def _scheduler_step(self, targets: list[dict[str, float]]) -> None:
        """One step of torch's chainable StepLR / MultiStepLR (ExponentialLR is StepLR of one epoch)."""
        self.last_epoch += 1
        if self.args.lr_class == "MultiStepLR":
            factor = self.gamma ** self.milestones.get(self.last_epoch, 0)
        else:
            factor = self.gamma if self.last_epoch % self.step_size == 0 else 1.0
        for group in targets:
            group["lr"] *= factor

    def _cosine(self, targets: list[dict[str, float]], epoch: float) -> None:
        """torch's CosineAnnealingWarmRestarts.step(epoch): closed form, eta_min = lr_min, T_0 = cycle_epochs."""
        t_0, t_mult, eta_min = self.t_0, self.t_mult, float(self.args.lr_kwargs["lr_min"])
        if epoch >= t_0:
            if t_mult == 1:
                t_cur, t_i = epoch % t_0, t_0
            else:
                n = int(math.log(epoch / t_0 * (t_mult - 1) + 1, t_mult))
                t_cur, t_i = epoch - t_0 * (t_mult ** n - 1) / (t_mult - 1), t_0 * t_mult ** n
        else:
            t_cur, t_i = epoch, t_0
        for group, base in zip(targets, self.base_lrs):
            group["lr"] = eta_min + (base - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


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

    def on_batch_start(self, state: TrainState) -> None:
        row = self.table[min(state.step, len(self.table) - 1)]
        for index, group in enumerate(state.optimizer.param_groups):
            group["lr"], group["weight_decay"] = float(row[index, 0]), float(row[index, 1])
        state.metrics["lr"] = state.optimizer.param_groups[0]["lr"]
