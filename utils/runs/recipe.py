"""A recipe inside a run: the evaluated recipe is saved in the run directory and in every checkpoint."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from policies.base import Policy
from policies.modifiers import build_recipe_policies
from policies.recipe.load import Recipe, load_recipe, load_recipe_text
from utils.errors import UserError
from utils.io import atomic_write_text

log = logging.getLogger(__name__)

RECIPE_FILE = "recipe.yaml"


class RecipeRecord(Policy):
    """Carries the evaluated recipe in every checkpoint; resuming with a different recipe is refused."""

    name = "recipe"

    def __init__(self, recipe: Recipe):
        self.text = recipe.to_yaml()

    def state_dict(self) -> dict[str, Any]:
        return {"yaml": self.text}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state or {}).get("yaml")
        if saved is not None and saved != self.text:
            raise UserError("the checkpoint was written with a different recipe than this run's; resume with the "
                            "recipe saved in the run directory (recipe.yaml) or start a new run")


CHECKPOINT_RECIPE = "checkpoint"   # `--recipe checkpoint`: the recipe the upstream file carries (SparseML files)


def read_run_recipe(path: str, recipe_args: str | None, *, embedded: str | None, checkpoint: str | None) -> Recipe:
    """`--recipe PATH`, or with `--recipe checkpoint` the recipe text stored in the upstream checkpoint."""
    if path != CHECKPOINT_RECIPE:
        return load_recipe(path, recipe_args)
    if embedded is None:
        raise UserError(f"--recipe checkpoint: {checkpoint or 'the run (no --from_checkpoint_path)'} carries no "
                        "recipe; pass a recipe file instead (configs/recipes/ has examples)")
    return load_recipe_text(embedded, recipe_args, source=f"{checkpoint} (its recipe)")


def recipe_for_run(path: str, recipe_args: str | None, *, run_dir: Path, resuming: bool,
                   embedded: str | None = None, checkpoint: str | None = None) -> Recipe:
    """The evaluated recipe of a run; a resumed run keeps the one it started with (run_dir/recipe.yaml)."""
    recipe = read_run_recipe(path, recipe_args, embedded=embedded, checkpoint=checkpoint)
    saved = Path(run_dir) / RECIPE_FILE
    if resuming and saved.exists():
        started_with = load_recipe_text(saved.read_text(), source=str(saved))
        if started_with.to_yaml() != recipe.to_yaml():
            raise UserError(f"{path} (with --recipe_args {recipe_args!r}) evaluates differently from the recipe "
                            f"this run started with ({saved}); resume with the same recipe and arguments, "
                            "or start a new run (--exp_name)")
        recipe = started_with
    atomic_write_text(saved, recipe.to_yaml())
    return recipe


def build_run_recipe(path: str, recipe_args: str | None, *, model: nn.Module, steps_per_epoch: int, run_dir: Path,
                     resuming: bool, epochs_flag: int | None = None, embedded: str | None = None,
                     checkpoint: str | None = None) -> tuple[list[Policy], int, Recipe]:
    """(policies, number of epochs, evaluated recipe) for `--recipe PATH [--recipe_args ...]`; `embedded` is
    the upstream file's own recipe, run by `--recipe checkpoint`."""
    if epochs_flag is not None:
        raise UserError("--epochs cannot be combined with --recipe: the recipe sets the length; "
                        "use --recipe_args '{\"num_epochs\": N}' (or the recipe's own variable)")
    recipe = recipe_for_run(path, recipe_args, run_dir=run_dir, resuming=resuming, embedded=embedded,
                            checkpoint=checkpoint)
    policies, epochs = build_recipe_policies(recipe, model=model, steps_per_epoch=steps_per_epoch)
    log.info("recipe %s: %d epochs, %d policies", path, epochs, len(policies))
    return [*policies, RecipeRecord(recipe)], epochs, recipe
