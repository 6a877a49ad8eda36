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
from utils.registry import unknown_name_message
from utils.sparsity import prunable_parameters

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


# SparseML's MobileNet-V1: sections of 1, 2, 2, 6, 2 depthwise-separable blocks; ours numbers the blocks 1..13.
_MOBILENET_SECTIONS = [(i, j) for i, n in enumerate((1, 2, 2, 6, 2)) for j in range(n)]
_MOBILENET_LAYERS = {"0": "depth.conv", "1": "depth.bn", "3": "point.conv", "4": "point.bn"}
_MOBILENET_NAME = re.compile(r"^model\.(\d+)\.(\d+)(?=\.|$)")


def is_mobilenet_v1(model: nn.Module) -> bool:
    children = dict(model.named_children())
    return set(children) == {"model", "fc"} and isinstance(children["model"], nn.Sequential) \
        and len(children["model"]) == len(_MOBILENET_SECTIONS) + 2


def sparseml_mobilenet_alias(name: str) -> str:
    """Our (AC/DC-layout MobileNetV1) name -> SparseML's MobileNet name for the same tensor or module."""
    if name == "fc" or name.startswith("fc."):
        return "classifier." + name
    m = _MOBILENET_NAME.match(name)
    if m is None:
        return name
    block, layer = int(m.group(1)), m.group(2)
    if block == 0:
        new = {"0": "input.conv", "1": "input.bn"}.get(layer)
    elif block <= len(_MOBILENET_SECTIONS) and layer in _MOBILENET_LAYERS:
        i, j = _MOBILENET_SECTIONS[block - 1]
        new = f"sections.{i}.{j}.{_MOBILENET_LAYERS[layer]}"
    else:
        new = None
    return name if new is None else new + name[m.end():]


def _aliases(names: Iterable[str], model: nn.Module) -> dict[str, str]:
    """alias -> our name, for every name (ours map to themselves); SparseML's ResNet and MobileNet names too."""
    table = {n: n for n in names}
    alias = sparseml_alias if is_torchvision_resnet(model) else \
        sparseml_mobilenet_alias if is_mobilenet_v1(model) else None
    if alias is not None:
        for n in list(table):
            table.setdefault(alias(n), n)
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
    """Module names (ours) for a recipe's `submodules`; SparseML's group names (`input`, `sections`,
    `sections.i`, `classifier`) stand for the modules of ours that hold the same layers."""
    if submodules is None:
        return [""]
    names = [n for n, _ in model.named_modules() if n]
    table = _aliases(names, model)
    groups: dict[str, list[str]] = {}
    if is_torchvision_resnet(model):
        groups = {"input": ["conv1", "bn1", "relu"], "sections": [n for n in names if re.fullmatch(r"layer\d+", n)],
                  "classifier": ["fc"]}
    elif is_mobilenet_v1(model):
        blocks = {f"sections.{i}.{j}": f"model.{b}" for b, (i, j) in enumerate(_MOBILENET_SECTIONS, 1)}
        groups = {"input": ["model.0"], "classifier": ["fc"],
                  "sections": list(blocks.values()),
                  **{f"sections.{i}": [m for s, m in blocks.items() if s.startswith(f"sections.{i}.")]
                     for i in range(5)}, **{s: [m] for s, m in blocks.items()}}
    chosen: dict[str, None] = {}
    for name in submodules:
        for ours in groups.get(name) or _match([name], table, what="submodule", source=source):
            chosen.setdefault(ours, None)
    return list(chosen)
