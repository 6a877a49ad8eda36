"""Recipe modifiers: one registry (`MODIFIERS`), one module per family; `build_recipe_policies` wires a recipe."""
from __future__ import annotations

import logging
import math

from torch import nn

from policies.base import Policy
from policies.masking import FixedMaskPolicy, MaskPolicy

# Importing the families registers them.
from policies.modifiers import (  # noqa: E402,F401
    acdc,
    distillation,
    layers,
    pruning,
    quantization,
    schedulers,  # isort: skip
    second_order,
    training,
)
from policies.modifiers.base import MODIFIERS, Modifier, parse_args
from policies.modifiers.training import RecipeSchedule, ScheduleWriter  # noqa: E402
from policies.recipe.load import Recipe
from utils.errors import UserError
from utils.registry import unknown_name_message
from utils.sparsity import masks_from_zeros, prunable_parameters

__all__ = ["MODIFIERS", "Modifier", "build_modifiers", "build_recipe_policies", "recipe_max_epochs", "recipe_method",
           "recipe_num_epochs"]

log = logging.getLogger(__name__)

# SparseML modifiers this project does not run, and why: recipes that use them fail with this line, not a guess.
TRANSFORMER_ONLY = ("SparseGPTModifier", "WandaPruningModifier", "GPTQModifier", "SmoothQuantModifier",
                    "LogarithmicEqualizationModifier", "OutputDistillationModifier", "MovementPruningModifier",
                    "LayerThinningModifier", "PerLayerDistillationModifier", "TrainableParamsModifier")
NOT_YET = ("RigLPruningModifier", "TopKASTPruningModifier", "PowerpropagationModifier", "StructuredPruningModifier",
           "ASRegModifier", "SetParamModifier", "GradualParamModifier", "SparsificationLoggingModifier")


def unsupported_message(type_name: str) -> str | None:
    """Why a SparseML modifier this project does not run is missing; None for names SparseML does not have."""
    if type_name in TRANSFORMER_ONLY:
        return (f"!{type_name} is SparseML's modifier for transformer / language models; this project runs "
                "vision recipes (remove it, or use a vision equivalent)")
    if type_name in NOT_YET:
        return f"!{type_name} is a SparseML modifier this project does not support yet; supported: " \
               + ", ".join(MODIFIERS.names())
    return None


def modifier_name(group: str, index: int, type_name: str) -> str:
    """Unique, stable policy name: checkpoints key policy state by it."""
    return f"recipe.{group}.{index}.{type_name}"


def modifier_class(recipe: Recipe, group: str, index: int, type_name: str) -> type[Modifier]:
    """The registered class of a recipe entry; a modifier this project does not run is named with the reason."""
    if type_name not in MODIFIERS:
        why = unsupported_message(type_name) or unknown_name_message("recipe modifier", type_name, MODIFIERS.names())
        raise UserError(f"{recipe.source}: {group}[{index}]: {why}")
    return MODIFIERS.get(type_name)


def build_modifiers(recipe: Recipe, *, model: nn.Module, steps_per_epoch: int) -> list[Modifier]:
    """Instantiate every modifier of an evaluated recipe against `model` (names resolved, args validated)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    out = []
    for position, (group, index, spec) in enumerate(recipe.modifiers):
        cls = modifier_class(recipe, group, index, spec.type)
        out.append(cls.from_spec(spec.args, name=modifier_name(group, index, spec.type), model=model,
                                 steps_per_epoch=steps_per_epoch, source=f"{recipe.source}: {group}[{index}] "
                                                                         f"!{spec.type}", position=position))
    return out


def _training_length(epochs: list[float], *, source: str) -> int:
    longest = max((math.ceil(e) for e in epochs), default=-1)
    if longest <= 0:
        raise UserError(f"{source}: the recipe sets no training length; add an EpochRangeModifier with end_epoch")
    return int(longest)


def recipe_num_epochs(modifiers: list[Modifier], *, source: str = "recipe") -> int:
    """Training length as SparseML's manager computes it (`max_epochs`): the largest start or end epoch of
    any modifier, each rounded up (an EpochRangeModifier is one modifier among the others)."""
    return _training_length([e for m in modifiers for e in m.schedule_epochs], source=source)


def recipe_max_epochs(recipe: Recipe) -> int:
    """`recipe_num_epochs` of an evaluated recipe before any model exists (from the validated arguments)."""
    epochs = []
    for group, index, spec in recipe.modifiers:
        cls = modifier_class(recipe, group, index, spec.type)
        epochs += cls.epochs_counted(parse_args(cls, spec.args, source=f"{recipe.source}: {group}[{index}] "
                                                                        f"!{spec.type}"))
    return _training_length(epochs, source=recipe.source)


def recipe_method(policies: list[Policy]) -> str | None:
    """The pruning method a recipe applies (its results label), if any: the last pruning modifier's."""
    methods = [m.method for m in policies if getattr(m, "method", None)]
    return methods[-1] if methods else None


def warn_idle_modifiers(modifiers: list[Modifier], *, epochs: int, steps_per_epoch: int) -> None:
    """One warning line per modifier that can never act within the recipe's training length."""
    total = epochs * steps_per_epoch
    for m in modifiers:
        if m.start_step >= total:
            log.warning("%s: starts at epoch %g, at or after the end of training (%d epochs): it has no effect",
                        m.source, m.args.start_epoch, epochs)


def build_recipe_policies(recipe: Recipe, *, model: nn.Module, steps_per_epoch: int) -> tuple[list[Policy], int]:
    """The recipe as policies for the Manager (the LR/WD schedule first), and its number of epochs."""
    modifiers = build_modifiers(recipe, model=model, steps_per_epoch=steps_per_epoch)
    epochs = recipe_num_epochs(modifiers, source=recipe.source)
    warn_idle_modifiers(modifiers, epochs=epochs, steps_per_epoch=steps_per_epoch)
    writers = [m for m in modifiers if isinstance(m, ScheduleWriter)]
    others = [m for m in modifiers if not isinstance(m, ScheduleWriter) and m.acts]
    policies: list[Policy] = ([RecipeSchedule(writers)] if writers else []) + others
    return policies + kept_zeros(policies, model=model, source=recipe.source), epochs


def kept_zeros(policies: list[Policy], *, model: nn.Module, source: str) -> list[Policy]:
    """A recipe that holds no masks (no pruning modifier) keeps the model's zeros fixed, as SparseML's
    ConstantPruningModifier over __ALL_PRUNABLE__ would: a sparse upstream never turns dense without a word.
    [FixedMaskPolicy] with one warning line, or [] when the recipe prunes or the model has no zeros."""
    if any(isinstance(p, MaskPolicy) for p in policies):
        return []
    sparse = {n: p for n, p in prunable_parameters(model).items() if bool((p == 0).any())}
    if not sparse:
        return []
    zeros = sum(int((p == 0).sum()) for p in sparse.values())
    total = sum(p.numel() for p in prunable_parameters(model).values())
    log.warning("%s has no pruning modifier: the model's zeros (%d weights, %.1f%% of its conv/linear weights, in "
                "%d layers) are kept at zero, as a ConstantPruningModifier over __ALL_PRUNABLE__ would; add pruning "
                "modifiers to change the mask", source, zeros, 100 * zeros / total, len(sparse))
    return [FixedMaskPolicy(masks_from_zeros(sparse))]
