"""SparseML-compatible recipes: YAML (or Markdown carrying YAML) with `!Modifier` tags and variables.

Every top-level key whose name contains `modifiers` holds a list of modifiers; every other key is a variable.
`eval(...)` strings in variables and modifier arguments go through `policies.recipe.expressions` (never Python's
eval). Overrides (`--recipe_args`) replace existing variables before evaluation. The evaluated recipe is
plain data (`Recipe.to_yaml()`), saved with every run and checkpoint, and loads back to the same recipe.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from policies.recipe.expressions import evaluate_expression, expression_body, free_names
from policies.recipe.yaml_text import ModifierSpec, dump_recipe, extract_yaml, load_scalar, load_yaml
from utils.config import read_text
from utils.errors import UserError
from utils.registry import unknown_name_message

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    """Variables and groups of modifiers; `evaluate_recipe` turns every eval(...) into a value.

    A staged recipe (`stage: {variables..., *_modifiers: [...]}`) keeps each stage's own variables in
    `stages`; its groups are named `<stage>.<group>` and see the stage's variables over the global ones
    (SparseML's rule; epochs stay absolute).
    """

    variables: dict[str, Any]
    groups: dict[str, list[ModifierSpec]]
    source: str = "<recipe>"
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def scope(self, group: str) -> dict[str, Any]:
        """The (raw) variables a group's modifiers see."""
        stage = group.split(".", 1)[0] if "." in group else None
        return {**self.variables, **self.stages.get(stage, {})}

    @property
    def modifiers(self) -> list[tuple[str, int, ModifierSpec]]:
        """(group, index in group, spec) for every modifier, in file order."""
        return [(g, i, spec) for g, specs in self.groups.items() for i, spec in enumerate(specs)]

    def to_yaml(self) -> str:
        """The recipe as YAML with `!Name` tags (after evaluation: plain numbers, no eval strings)."""
        return dump_recipe(self.variables, self.groups)


def parse_recipe_text(text: str, *, source: str = "<recipe>") -> Recipe:
    """Parse recipe text into raw variables and modifier groups (nothing evaluated yet)."""
    body = extract_yaml(text, source=source)
    try:
        data = load_yaml(body)
    except yaml.YAMLError as err:
        raise UserError(f"{source}: invalid recipe YAML: {' '.join(str(err).split())[:300]}") from None
    if isinstance(data, ModifierSpec):          # a single modifier, as SparseML also loads
        data = {"modifiers": [data]}
    elif isinstance(data, list):                # a bare list of modifiers
        data = {"modifiers": data}
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe must be a mapping of variables and '*modifiers' lists, "
                        f"got {type(data).__name__}")
    variables, groups, stages = {}, {}, {}
    for key, value in data.items():
        key = str(key)
        if isinstance(value, dict) and any("modifiers" in str(k) for k in value):
            stage_variables, stage_groups = _split_section(value, source=f"{source}: stage {key!r}")
            stages[key] = stage_variables
            groups.update({f"{key}.{group}": specs for group, specs in stage_groups.items()})
        else:
            section_variables, section_groups = _split_section({key: value}, source=source)
            variables.update(section_variables)
            groups.update(section_groups)
    if not groups:
        raise UserError(f"{source}: no modifiers found; a recipe needs a key like 'training_modifiers:' "
                        "holding a list of '!ModifierName' entries")
    return Recipe(variables=variables, groups=groups, source=source, stages=stages)


def _split_section(data: Mapping[str, Any], *, source: str) -> tuple[dict[str, Any], dict[str, list[ModifierSpec]]]:
    """A mapping's variables and its `*modifiers` groups."""
    variables, groups = {}, {}
    for key, value in data.items():
        key = str(key)
        if "modifiers" in key:
            groups[key] = _modifier_list(value, key=key, source=source)
        elif isinstance(value, ModifierSpec) or (isinstance(value, list) and value
                                                 and all(isinstance(v, ModifierSpec) for v in value)):
            raise UserError(f"{source}: key {key!r} holds modifiers but its name lacks 'modifiers'; "
                            f"rename it, e.g. '{key}_modifiers'")
        else:
            variables[key] = value
    return variables, groups


def _modifier_list(value: Any, *, key: str, source: str) -> list[ModifierSpec]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    bad = [i for i, v in enumerate(items) if not isinstance(v, ModifierSpec)]
    if bad:
        raise UserError(f"{source}: {key}[{bad[0]}] is not a '!ModifierName' entry; every item under a "
                        "'*modifiers' key must be tagged, e.g. '- !EpochRangeModifier'")
    return items


def parse_recipe_args(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """`--recipe_args`: a JSON object, or `k=v,k2=v2` (values parsed as YAML scalars)."""
    if text is None or text == "":
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise UserError(f"--recipe_args: invalid JSON ({err.msg}); "
                            "expected e.g. '{\"num_epochs\": 150}'") from None
        if not isinstance(data, dict):
            raise UserError("--recipe_args: expected a JSON object like '{\"num_epochs\": 150}'")
        return data
    out = {}
    for item in filter(None, (p.strip() for p in stripped.split(","))):
        if "=" not in item:
            raise UserError(f"--recipe_args: {item!r} is not 'name=value'; use 'num_epochs=150,init_lr=0.1' "
                            "or a JSON object")
        name, value = item.split("=", 1)
        out[name.strip()] = load_scalar(value.strip()) if value.strip() else ""
    return out


def apply_overrides(recipe: Recipe, overrides: Mapping[str, Any]) -> Recipe:
    """Replace existing variables, global or of any stage (before evaluation); an unknown name is an error."""
    known = set(recipe.variables).union(*recipe.stages.values())
    for name in overrides:
        if name not in known:
            raise UserError(f"{recipe.source}: --recipe_args: "
                            + unknown_name_message("recipe variable", name, sorted(known),
                                                 none="the recipe defines no variables to override"))

    overrides = {**scaled_phases(recipe.variables, overrides, source=recipe.source), **overrides}

    def override(variables: Mapping[str, Any]) -> dict[str, Any]:
        return {k: overrides.get(k, v) for k, v in variables.items()}

    return Recipe(variables=override(recipe.variables), groups=recipe.groups, source=recipe.source,
                  stages={name: override(v) for name, v in recipe.stages.items()})


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scaled_phase(value: float, old: float, new: float) -> float:
    """`value` (a phase's epoch, of `old` epochs) scaled to `new` epochs, keeping a phase that runs from it to the end
    at least one epoch long (or as long as it was, if shorter): in proportion alone, the seed-001 recipe's last 2 QAT
    epochs of 52 became 0.08 of an epoch in a 2-epoch run, less than one optimizer step, and no INT8 came out."""
    proportional = value * new / old
    if value >= old:
        return proportional
    return max(0.0, min(proportional, new - min(old - value, 1.0)))


def scaled_phases(variables: Mapping[str, Any], overrides: Mapping[str, Any], *, source: str) -> dict[str, float]:
    """A recipe shortened through num_epochs past one of its phases keeps them in proportion: when one of the other
    global variables named *_epoch / *_epochs, written as a plain number and not set by the overrides, would fall at
    or past the new end (the seed-001 recipe's quantization_start_epoch 50 with num_epochs 3: QAT never starts, and
    its modifiers would make the run 50 epochs long), all such variables within the old length are scaled by
    new / old num_epochs, a phase that ran to the end kept at least one epoch long (`_scaled_phase`), and logged.
    Otherwise the recipe runs as written, as SparseML runs it (the AC/DC recipe's fixed warm-up and QAT lengths, its
    phases written as eval(...) of num_epochs)."""
    old, new = variables.get("num_epochs"), overrides.get("num_epochs")
    if not (_number(old) and _number(new)) or old <= 0 or old == new:
        return {}
    phases = {name: value for name, value in variables.items()
              if name != "num_epochs" and name not in overrides and name.endswith(("_epoch", "_epochs"))
              and _number(value) and 0 < value <= old}
    if not any(value >= new for value in phases.values()):
        return {}
    scaled = {name: round(_scaled_phase(value, old, new), 6) for name, value in phases.items()}
    log.warning("%s: num_epochs %s -> %s puts %s at or past the end; scaled with it: %s (set them in --recipe_args "
                "to choose otherwise)", source, old, new,
                ", ".join(k for k, v in phases.items() if v >= new),
                ", ".join(f"{k} {variables[k]} -> {v:g}" for k, v in scaled.items()))
    return scaled


def resolve_variables(variables: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Evaluate every variable, in whatever order their references need; cycles are named."""
    resolved: dict[str, Any] = {}
    visiting: list[str] = []

    def resolve(name: str) -> Any:
        if name in resolved:
            return resolved[name]
        if name in visiting:
            cycle = " -> ".join(visiting[visiting.index(name):] + [name])
            raise UserError(f"{source}: recipe variables refer to each other in a cycle: {cycle}")
        raw = variables[name]
        body = expression_body(raw)
        if body is None:
            resolved[name] = raw
            return raw
        visiting.append(name)
        where = f"{source}: variable {name!r}"
        for ref in sorted(free_names(body, source=where)):
            if ref in variables:
                resolve(ref)
        value = evaluate_expression(body, resolved, source=where)
        visiting.pop()
        resolved[name] = value
        return value

    for name in variables:
        resolve(name)
    return {name: resolved[name] for name in variables}


def evaluate_value(value: Any, variables: Mapping[str, Any], *, source: str) -> Any:
    """Evaluate eval(...) strings anywhere inside lists and mappings (keys included)."""
    body = expression_body(value)
    if body is not None:
        return evaluate_expression(body, variables, source=source)
    if isinstance(value, list):
        return [evaluate_value(v, variables, source=f"{source}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {evaluate_value(k, variables, source=source): evaluate_value(v, variables, source=f"{source}.{k}")
                for k, v in value.items()}
    return value


def referenced_variables(recipe: Recipe) -> set[str]:
    """Variables the modifiers use, directly or through other variables."""
    names: set[str] = set()

    def collect(value: Any, where: str, scope: Mapping[str, Any]) -> None:
        body = expression_body(value)
        if body is not None:
            for name in free_names(body, source=where) - names:
                names.add(name)
                if name in scope:
                    collect(scope[name], f"{recipe.source}: variable {name!r}", scope)
        elif isinstance(value, list):
            for v in value:
                collect(v, where, scope)
        elif isinstance(value, dict):
            for k, v in value.items():
                collect(k, where, scope)
                collect(v, where, scope)

    for group, index, spec in recipe.modifiers:
        collect(spec.args, f"{recipe.source}: {group}[{index}]", recipe.scope(group))
    return names


def warn_unused_overrides(recipe: Recipe, overrides: Mapping[str, Any]) -> None:
    """One warning line per --recipe_args variable that no modifier uses (overriding it changes nothing)."""
    unused = sorted(set(overrides) - referenced_variables(recipe))
    if unused:
        log.warning("%s: --recipe_args %s: no modifier uses %s; overriding it has no effect", recipe.source,
                    ", ".join(unused), "it" if len(unused) == 1 else "them")


def evaluate_recipe(recipe: Recipe, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Apply overrides, resolve variables, evaluate every modifier argument; returns a plain-data recipe."""
    if overrides:
        warn_unused_overrides(recipe, overrides)
    recipe = apply_overrides(recipe, overrides or {})
    variables = resolve_variables(recipe.variables, source=recipe.source)
    scopes = {stage: resolve_variables({**recipe.variables, **stage_variables}, source=f"{recipe.source}: "
                                       f"stage {stage!r}") for stage, stage_variables in recipe.stages.items()}
    groups = {}
    for group, specs in recipe.groups.items():
        scope = scopes.get(group.split(".", 1)[0], variables) if "." in group else variables
        groups[group] = [ModifierSpec(spec.type, {str(k): evaluate_value(v, scope,
                                                                         source=f"{recipe.source}: {group}[{i}] "
                                                                                f"!{spec.type}.{k}")
                                                  for k, v in spec.args.items()})
                         for i, spec in enumerate(specs)]
    return Recipe(variables=variables, groups=groups, source=recipe.source)


def load_recipe(path: str | Path, overrides: str | Mapping[str, Any] | None = None) -> Recipe:
    """Read, override and evaluate a recipe file (YAML or Markdown)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found; see configs/recipes/ for examples")
    recipe = parse_recipe_text(read_text(path), source=str(path))
    return evaluate_recipe(recipe, parse_recipe_args(overrides) if not isinstance(overrides, Mapping) else overrides)


def load_recipe_text(text: str, overrides: str | Mapping[str, Any] | None = None, *,
                     source: str = "<recipe>") -> Recipe:
    """Like `load_recipe`, from text (e.g. the evaluated recipe saved in a checkpoint)."""
    recipe = parse_recipe_text(text, source=source)
    return evaluate_recipe(recipe, parse_recipe_args(overrides) if not isinstance(overrides, Mapping) else overrides)
