"""Which parameters and submodules a recipe names, in our names; SparseML's ResNet names are accepted too.

SparseML's ResNets call the stem `input`, the stages `sections.{i}`, the shortcut `identity` and the head
`classifier.fc`; ours use torchvision's names (`conv1`/`bn1`, `layer{i+1}`, `downsample.0/1`, `fc`). Every
name of ours gets a SparseML alias, and recipe names and `re:` patterns match either.
"""
from __future__ import annotations

import logging
import re
from typing import Iterable

from torch import nn

from utils.errors import UserError
from utils.sparsity import prunable_parameters
from utils.registry import unknown_name_message

log = logging.getLogger(__name__)

ALL_PRUNABLE = "__ALL_PRUNABLE__"
ALL = "__ALL__"

# (our-name pattern, SparseML replacement), applied in order to a torchvision-named ResNet's names.
_TO_SPARSEML = [
    (re.compile(r"^layer(\d+)(?=\.|$)"), lambda m: f"sections.{int(m.group(1)) - 1}"),
    (re.compile(r"\.downsample\.0(?=\.|$)"), lambda m: ".identity.conv"),
    (re.compile(r"\.downsample\.1(?=\.|$)"), lambda m: ".identity.bn"),
    (re.compile(r"^conv1(?=\.|$)"), lambda m: "input.conv"),
    (re.compile(r"^bn1(?=\.|$)"), lambda m: "input.bn"),
    (re.compile(r"^fc(?=\.|$)"), lambda m: "classifier.fc"),
]


def is_torchvision_resnet(model: nn.Module) -> bool:
    names = {n for n, _ in model.named_children()}
    return {"conv1", "bn1", "layer1", "fc"} <= names


def sparseml_alias(name: str) -> str:
    """Our (torchvision ResNet) name -> SparseML's name for the same tensor or module."""
    for pattern, repl in _TO_SPARSEML:
        name = pattern.sub(repl, name)
    return name


def _aliases(names: Iterable[str], model: nn.Module) -> dict[str, str]:
    """alias -> our name, for every name (ours map to themselves)."""
    table = {n: n for n in names}
    if is_torchvision_resnet(model):
        for n in list(table):
            table.setdefault(sparseml_alias(n), n)
    return table


def _match(patterns: list[str], table: dict[str, str], *, what: str, source: str) -> list[str]:
    """Our names matched by exact names or `re:` patterns (against ours and aliases), deduplicated."""
    chosen: dict[str, None] = {}
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise UserError(f"{source}: {what} entries must be strings, got {pattern!r}")
        if pattern.startswith("re:"):
            regex = re.compile(pattern[3:])
            hits = [ours for alias, ours in table.items() if regex.match(alias)]
            if not hits:
                raise UserError(f"{source}: {what} pattern {pattern!r} matches nothing in the model; "
                                f"names look like {', '.join(list(table)[:4])}")
        elif pattern in table:
            hits = [table[pattern]]
        else:
            raise UserError(f"{source}: " + unknown_name_message(what, pattern, sorted(table))[:600])
        for hit in hits:
            chosen.setdefault(hit, None)
    duplicates = len(patterns) - len(set(patterns))
    if duplicates:
        log.info("%s: %d duplicate %s entries ignored", source, duplicates, what)
    return list(chosen)


def resolve_params(model: nn.Module, params: str | list[str] | None, *, source: str,
                   default: str | None = None) -> list[str]:
    """Parameter names (ours) for a recipe's `params`: names, `re:` patterns, __ALL_PRUNABLE__ or __ALL__."""
    params = default if params is None else params
    if params is None:
        raise UserError(f"{source}: 'params' is required (a list of names, 're:' patterns, or __ALL_PRUNABLE__)")
    if isinstance(params, str):
        token = params.upper()
        if token == ALL_PRUNABLE:
            return list(prunable_parameters(model))
        if token == ALL:
            return [n for n, _ in model.named_parameters()]
        params = [params]
    if not isinstance(params, list):
        raise UserError(f"{source}: 'params' must be a list or __ALL_PRUNABLE__, got {params!r}")
    flat: list[str] = []
    for p in params:
        if isinstance(p, str) and p.upper() in (ALL_PRUNABLE, ALL):
            flat.extend(resolve_params(model, p, source=source))
        else:
            flat.append(p)
    table = _aliases((n for n, _ in model.named_parameters()), model)
    return _match(flat, table, what="parameter", source=source)


def resolve_submodules(model: nn.Module, submodules: list[str] | None, *, source: str) -> list[str]:
    """Module names (ours) for a recipe's `submodules`; SparseML's `input` is our stem (conv1 + bn1)."""
    if submodules is None:
        return [""]
    names = [n for n, _ in model.named_modules() if n]
    table = _aliases(names, model)
    if is_torchvision_resnet(model):
        table.setdefault("input", "conv1")
        table.setdefault("sections", "layer1")
        table.setdefault("classifier", "fc")
    chosen = _match(list(submodules), table, what="submodule", source=source)
    if is_torchvision_resnet(model):
        # The bare SparseML group names stand for several of our modules.
        if "input" in submodules:
            chosen += [n for n in ("bn1", "relu") if n not in chosen]
        if "sections" in submodules:
            chosen += [n for n in names if re.fullmatch(r"layer\d+", n) and n not in chosen]
    return chosen
