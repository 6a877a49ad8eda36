"""Recipe modifiers: one registry (`MODIFIERS`), one module per family; `build_recipe_policies` wires a recipe."""
from __future__ import annotations

import math

from torch import nn

from policies.base import Policy
from policies.modifiers.base import MODIFIERS, Modifier, epoch_to_step
from policies.recipe import Recipe
from utils.errors import UserError
from utils.registry import unknown_name_message

# Importing the families registers them.
from policies.modifiers import acdc, pruning, quantization, training  # noqa: E402,F401  isort: skip
from policies.modifiers.training import EpochRangeModifier, RecipeSchedule, ScheduleWriter  # noqa: E402

__all__ = ["MODIFIERS", "Modifier", "build_modifiers", "build_recipe_policies", "epoch_to_step", "recipe_num_epochs"]


def modifier_name(group: str, index: int, type_name: str) -> str:
    """Unique, stable policy name: checkpoints key policy state by it."""
    return f"recipe.{group}.{index}.{type_name}"


def build_modifiers(recipe: Recipe, *, model: nn.Module, steps_per_epoch: int) -> list[Modifier]:
    """Instantiate every modifier of an evaluated recipe against `model` (names resolved, args validated)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    out = []
    for group, index, spec in recipe.modifiers:
        source = f"{recipe.source}: {group}[{index}] !{spec.type}"
        if spec.type not in MODIFIERS:
            raise UserError(f"{recipe.source}: {group}[{index}]: "
                            + unknown_name_message("recipe modifier", spec.type, MODIFIERS.names()))
        cls = MODIFIERS.get(spec.type)
        out.append(cls.from_spec(spec.args, name=modifier_name(group, index, spec.type), model=model,
                                 steps_per_epoch=steps_per_epoch, source=source))
    return out


def recipe_num_epochs(modifiers: list[Modifier], *, source: str = "recipe") -> int:
    """Training length: the EpochRangeModifier's end (else the latest epoch any modifier needs)."""
    ranges = [m for m in modifiers if isinstance(m, EpochRangeModifier)]
    epochs = max(m.args.end_epoch for m in ranges) if ranges else max((m.last_epoch for m in modifiers), default=0)
    if epochs <= 0:
        raise UserError(f"{source}: the recipe sets no training length; add an EpochRangeModifier with end_epoch")
    if not float(epochs).is_integer():
        raise UserError(f"{source}: training length {epochs} epochs is not whole; the loop runs whole epochs "
                        "(make the EpochRangeModifier end_epoch an integer)")
    return int(math.floor(epochs))


def build_recipe_policies(recipe: Recipe, *, model: nn.Module, steps_per_epoch: int) -> tuple[list[Policy], int]:
    """The recipe as policies for the Manager (the LR/WD schedule first), and its number of epochs."""
    modifiers = build_modifiers(recipe, model=model, steps_per_epoch=steps_per_epoch)
    writers = [m for m in modifiers if isinstance(m, ScheduleWriter)]
    others = [m for m in modifiers if not isinstance(m, (ScheduleWriter, EpochRangeModifier))]
    policies: list[Policy] = ([RecipeSchedule(writers)] if writers else []) + others
    return policies, recipe_num_epochs(modifiers, source=recipe.source)
