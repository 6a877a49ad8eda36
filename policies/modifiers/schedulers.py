"""LearningRateModifier: torch's LR schedulers driven step by step the way SparseML drives them."""
from __future__ import annotations

import math
import sys
from collections import Counter
from typing import Any, ClassVar, Literal

from pydantic import Field

from policies.modifiers.base import MODIFIERS, ModifierArgs
from policies.modifiers.training import Groups, ScheduleWriter, check_no_frequency
from utils.errors import UserError


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
