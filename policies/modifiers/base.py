"""What every recipe modifier shares: validated arguments, epoch -> step conversion, a unique policy name."""
from __future__ import annotations

import math
from typing import Any, ClassVar

from torch import nn

from policies.base import Policy
from utils.config import StrictModel, validate
from utils.errors import UserError
from utils.registry import Registry, unknown_name_message

MODIFIERS: Registry[type["Modifier"]] = Registry("recipe modifier")


class ModifierArgs(StrictModel):
    """Arguments every scheduled modifier accepts; -1 means 'from the start' / 'never ends' (SparseML's)."""

    start_epoch: float = -1.0
    end_epoch: float = -1.0


def epoch_to_step(epoch: float, steps_per_epoch: int) -> int:
    """The one conversion from (fractional) recipe epochs to optimizer steps."""
    return int(round(epoch * steps_per_epoch))


class Modifier(Policy):
    """A recipe entry turned into a policy. Subclasses set `Args` and build their schedule in `setup`."""

    Args: ClassVar[type[ModifierArgs]] = ModifierArgs

    def __init__(self, args: ModifierArgs, *, name: str, model: nn.Module, steps_per_epoch: int, source: str):
        self.args = args
        self.name = name
        self.source = source
        self.steps_per_epoch = steps_per_epoch
        self.start_step = epoch_to_step(max(args.start_epoch, 0.0), steps_per_epoch)
        self.end_step = None if args.end_epoch < 0 else epoch_to_step(args.end_epoch, steps_per_epoch)
        if self.end_step is not None and args.end_epoch < max(args.start_epoch, 0.0):
            raise UserError(f"{source}: end_epoch {args.end_epoch} is before start_epoch {args.start_epoch}")
        self.setup(model)

    def setup(self, model: nn.Module) -> None:
        """Resolve parameter names etc. against the model (errors surface before training starts)."""

    def to_step(self, epoch: float) -> int:
        return epoch_to_step(epoch, self.steps_per_epoch)

    @property
    def last_epoch(self) -> float:
        """The epoch this modifier needs training to reach (for the recipe's length)."""
        return max(self.args.start_epoch, self.args.end_epoch, 0.0)

    @classmethod
    def from_spec(cls, args: dict[str, Any], *, name: str, model: nn.Module, steps_per_epoch: int,
                  source: str) -> "Modifier":
        return cls(parse_args(cls, args, source=source), name=name, model=model,
                   steps_per_epoch=steps_per_epoch, source=source)


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
