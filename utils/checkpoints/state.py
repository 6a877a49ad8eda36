"""The key pipeline a flavour drives: pick the state dict, strip prefixes, split masks off, unwrap, rename."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from utils.checkpoints.files import PickledModule, pickled_module_state
from utils.checkpoints.flavours import Flavour
from utils.errors import UserError


@dataclass
class NormalizedState:
    """A checkpoint's tensors in our naming, with masks split off (keys are parameter names)."""

    tensors: dict[str, torch.Tensor]
    weight_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    bias_masks: dict[str, torch.Tensor] = field(default_factory=dict)


def extract_state_dict(raw: Any, flavour: Flavour, *, source: str = "") -> tuple[dict[str, torch.Tensor], str | None]:
    """The first candidate of `flavour.state_dict_key` that is a {str: Tensor} mapping (or a pickled module)."""
    for key in flavour.state_dict_key:
        candidate = raw if key is None else (raw.get(key) if isinstance(raw, Mapping) else None)
        if isinstance(candidate, PickledModule):
            candidate = pickled_module_state(candidate)
        if (isinstance(candidate, Mapping) and candidate
                and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in candidate.items())):
            return dict(candidate), key
    top = sorted(map(str, raw))[:8] if isinstance(raw, Mapping) else type(raw).__name__
    raise UserError(f"{source}: flavour {flavour.name!r} found no state dict (tried "
                    f"{['<top level>' if k is None else k for k in flavour.state_dict_key]}); "
                    f"the file's top level is {top}; pick another --checkpoint_flavour")


def _strip(key: str, prefixes: list[str]) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if prefix and key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def split_key(key: str, flavour: Flavour) -> tuple[str, str]:
    """(kind, name): kind is tensor, weight_mask, bias_mask or threshold; name is the parameter it belongs to."""
    spec = flavour.mask
    key = _strip(key, flavour.strip_prefixes)
    kind = "tensor"
    for suffix, k, param in ((spec.weight_mask_suffix, "weight_mask", "weight"),
                             (spec.bias_mask_suffix, "bias_mask", "bias"),
                             (flavour.soft_threshold_suffix, "threshold", "weight")):
        if spec.source != "zeros" or k == "threshold":
            if suffix and key.endswith(suffix):
                kind, key = k, key[: -len(suffix)] + "." + param
                break
    if spec.wrapped_infix:
        key = key.replace(spec.wrapped_infix + ".", ".")
    return kind, key


def rename(key: str, renames: Mapping[str, str]) -> str:
    for pattern, replacement in renames.items():
        key = re.sub(pattern, replacement, key)
    return key


def normalize_state(sd: Mapping[str, torch.Tensor], flavour: Flavour, *, source: str = "") -> NormalizedState:
    """Steps 2-4 of the pipeline: strip, split masks, unwrap, soft-threshold, rename."""
    out = NormalizedState(tensors={})
    thresholds: dict[str, torch.Tensor] = {}
    homes = {"tensor": out.tensors, "weight_mask": out.weight_masks, "bias_mask": out.bias_masks,
             "threshold": thresholds}
    origin: dict[tuple[str, str], str] = {}
    for key, value in sd.items():
        kind, name = split_key(key, flavour)
        name = rename(name, flavour.renames)
        if (kind, name) in origin:
            raise UserError(f"{source}: flavour {flavour.name!r} maps both {origin[kind, name]!r} and {key!r} "
                            f"to {name!r}; fix its strip_prefixes/renames")
        origin[kind, name] = key
        homes[kind][name] = value
    for name, s in thresholds.items():
        if name not in out.tensors:
            raise UserError(f"{source}: soft threshold {origin['threshold', name]!r} has no weight {name!r}")
        w = out.tensors[name]
        out.tensors[name] = torch.sign(w) * torch.relu(w.abs() - torch.sigmoid(s.to(w.dtype)))
    return out
