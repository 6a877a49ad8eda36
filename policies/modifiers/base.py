"""What every recipe modifier shares: validated arguments, SparseML's epoch -> step clock, a unique policy name."""
from __future__ import annotations

import math
from typing import Any, ClassVar

from torch import nn

from policies.base import Policy
from policies.modifiers import clock
from utils.config import StrictModel, validate
from utils.errors import UserError
from utils.registry import Registry, unknown_name_message

MODIFIERS: Registry[type["Modifier"]] = Registry("recipe modifier")


class ModifierArgs(StrictModel):
    """Arguments every scheduled modifier accepts; -1 means 'from the start' / 'never ends' (SparseML's).
    `log_types` (SparseML's logger selection) is accepted everywhere; this project logs through its own loggers."""

    start_epoch: float = -1.0
    end_epoch: float = -1.0
    log_types: Any = None


class Modifier(Policy):
    """A recipe entry turned into a policy. Subclasses set `Args` and build their schedule in `setup`.

    `start_step`/`end_step` are where SparseML's wrapped optimizer starts and ends the modifier (see
    `policies.modifiers.clock`); `position` is its place in the recipe, the last tie-breaker of SparseML's
    order among modifiers acting on the same step.
    """

    Args: ClassVar[type[ModifierArgs]] = ModifierArgs
    method: ClassVar[str | None] = None      # the results' 'model' label of a pruning method, e.g. "GMP"
    acts: ClassVar[bool] = True              # False: only shapes the schedule (EpochRangeModifier)

    def __init__(self, args: ModifierArgs, *, name: str, model: nn.Module, steps_per_epoch: int, source: str,
                 position: int = 0):
        self.args = args
        self.name = name
        self.source = source
        self.position = position
        self.steps_per_epoch = steps_per_epoch
        self.start_step = clock.start_step(args.start_epoch, steps_per_epoch)
        self.end_step = clock.end_step(args.end_epoch, steps_per_epoch)
        if self.end_step is not None and args.end_epoch < max(args.start_epoch, 0.0):
            raise UserError(f"{source}: end_epoch {args.end_epoch} is before start_epoch {args.start_epoch}")
        self.setup(model)


    def facts(self) -> dict[str, Any]:
        """A pruning modifier names the run's method (the last one in the recipe wins)."""
        return {"method": self.method} if self.method else {}
    def setup(self, model: nn.Module) -> None:
        """Resolve parameter names etc. against the model (errors surface before training starts)."""

    def to_step(self, epoch: float) -> int:
        """The first optimizer step at or after `epoch`."""
        return clock.first_step_at(epoch, self.steps_per_epoch)

    def epoch_at(self, step: int) -> float:
        """The epoch SparseML gives modifiers at optimizer step `step`."""
        return clock.step_epoch(step, self.steps_per_epoch)

    @property
    def order(self) -> tuple:
        """SparseML's order among modifiers updating on the same step (the last one's writes stand)."""
        return clock.manager_order(self.args.end_epoch, self.args.start_epoch, self.position)

    @property
    def schedule_epochs(self) -> list[float]:
        return self.epochs_counted(self.args)

    @classmethod
    def epochs_counted(cls, args: ModifierArgs) -> list[float]:
        """The epochs SparseML counts for the recipe's length: start and end, where set (-1: not set)."""
        return [e for e in (args.start_epoch, args.end_epoch) if e > -1]

    @classmethod
    def from_spec(cls, args: dict[str, Any], *, name: str, model: nn.Module, steps_per_epoch: int,
                  source: str, position: int = 0) -> "Modifier":
        return cls(parse_args(cls, args, source=source), name=name, model=model,
                   steps_per_epoch=steps_per_epoch, source=source, position=position)


def parse_args(cls: type[Modifier], args: dict[str, Any], *, source: str) -> ModifierArgs:
    """Validate a modifier's arguments; an unknown one is named with a did-you-mean suggestion."""
    valid = sorted(cls.Args.model_fields)
    for key in args:
        if key not in cls.Args.model_fields:
            raise UserError(f"{source}: " + unknown_name_message(f"argument of {cls.__name__}", key, valid))
    return validate(args, cls.Args, source=source)


def check_fraction(value: float, what: str, *, source: str) -> float:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0 and math.isfinite(value)):
        raise UserError(f"{source}: {what} must be a sparsity fraction in [0, 1], got {value!r}")
    return float(value)
