"""Checkpoint flavours: a YAML file per family of upstream checkpoints says how its files are read.

A user supports a new family by writing YAML (configs/checkpoints/<name>.yaml), not code. The key
pipeline a flavour drives, in order (see `normalize_state`):
  1. pick the state dict: the first of `state_dict_key` present (null = the top level itself);
  2. strip `strip_prefixes` (e.g. DataParallel's `module.`), repeatedly;
  3. split off mask buffers (`X<weight_mask_suffix>` is the mask of `X.weight`) and unwrap wrapped
     layers (`X._layer.weight` -> `X.weight`); STR soft thresholds are applied and consumed;
  4. apply `renames` (ordered regex -> replacement, each to the result of the previous) to every key.
`detect` rules look at the keys after step 3 (before renames).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from pydantic import Field, field_validator, model_validator

from models import MODELS
from utils.config import StrictModel, read_yaml, validate
from utils.errors import UserError
from utils.registry import Registry, unknown_name_message

log = logging.getLogger(__name__)

FLAVOUR_DIR = Path(__file__).resolve().parent.parent / "configs" / "checkpoints"
# Modules whose callables would let a pickle run arbitrary code; never accepted as trusted globals.
_DENIED_MODULES = {"os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "builtins", "runpy", "pickle",
                   "marshal", "ctypes", "code", "pty", "socket", "webbrowser"}
_DENIED_NAMES = {"torch.load", "torch.serialization.load", "torch.hub.load", "torch.jit.load", "numpy.load"}


class MaskSpec(StrictModel):
    """Where masks come from: `zeros` (weight != 0), `buffers` (mask tensors stored beside the weights),
    `auto` (buffers when the file has any, else zeros), `entry` (a top-level {param: bool mask} map,
    else zeros)."""

    source: Literal["zeros", "buffers", "auto", "entry"] = "zeros"
    weight_mask_suffix: str | None = "._weight_mask"
    bias_mask_suffix: str | None = "._bias_mask"
    wrapped_infix: str | None = "._layer"
    entry_key: str = "masks"


class DetectRule(StrictModel):
    """All conditions must hold. Key regexes use re.search on the normalised state-dict keys."""

    top_level_keys: list[str] = []
    absent_top_level_keys: list[str] = []
    fields: dict[str, str] = {}  # dotted path in the file -> regex that str(value) must fullmatch
    required_keys: list[str] = []  # each regex must match at least one key
    forbidden_keys: list[str] = []  # no key may match any of these
    key_ndim: dict[str, int] = {}  # regex -> ndim every matching tensor has (at least one must match)

    @field_validator("required_keys", "forbidden_keys")
    @classmethod
    def _regex_list(cls, v: list[str]) -> list[str]:
        return [_check_regex(p) for p in v]

    @field_validator("fields")
    @classmethod
    def _regex_values(cls, v: dict[str, str]) -> dict[str, str]:
        return {k: _check_regex(p) for k, p in v.items()}

    @field_validator("key_ndim")
    @classmethod
    def _regex_keys(cls, v: dict[str, int]) -> dict[str, int]:
        return {_check_regex(p): n for p, n in v.items()}


Normalization = Literal["dataset"] | dict[Literal["mean", "std"], list[float]]


class Flavour(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str
    method: str | None = None  # label for results tables, e.g. "AC/DC"
    arch: str | None  # null: read `arch`/`arch_kwargs` from the file (the native format)
    arch_kwargs: dict[str, Any] = {}
    state_dict_key: list[str | None] = [None]
    strip_prefixes: list[str] = []
    renames: dict[str, str] = {}
    classifier_keys: list[str] = Field(min_length=1)
    classifier_from_conv: bool = False  # the classifier is stored as a 1x1 conv (STR): reshape it
    soft_threshold_suffix: str | None = None  # STR: w = sign(w) * relu(|w| - sigmoid(s)), s stored at X<suffix>
    mask: MaskSpec = MaskSpec()
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    normalization: Normalization = "dataset"
    input_size: int = Field(224, ge=8)
    detect: list[DetectRule] = []
    trusted_globals: list[str] = []

    @field_validator("state_dict_key", mode="before")
    @classmethod
    def _as_list(cls, v: Any) -> Any:
        return [v] if v is None or isinstance(v, str) else v

    @field_validator("renames")
    @classmethod
    def _renames(cls, v: dict[str, str]) -> dict[str, str]:
        for p in v:
            _check_regex(p)
        return v

    @field_validator("classifier_keys")
    @classmethod
    def _classifier(cls, v: list[str]) -> list[str]:
        return [_check_regex(p) for p in v]

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str | None) -> str | None:
        if v is not None and v not in MODELS:
            raise ValueError(unknown_name_message(MODELS.kind, v, MODELS.names()))
        return v

    @field_validator("normalization")
    @classmethod
    def _norm(cls, v: Any) -> Any:
        if isinstance(v, dict):
            if set(v) != {"mean", "std"} or any(len(x) != 3 for x in v.values()) or min(v["std"]) <= 0:
                raise ValueError("normalization must be 'dataset' or {mean: [3 floats], std: [3 positive floats]}")
        return v

    @field_validator("trusted_globals")
    @classmethod
    def _globals(cls, v: list[str]) -> list[str]:
        for name in v:
            if "." not in name:
                raise ValueError(f"trusted global {name!r} must be a dotted 'module.Name'")
            if name.split(".")[0] in _DENIED_MODULES or name in _DENIED_NAMES:
                raise ValueError(f"trusted global {name!r} is refused: it could run arbitrary code")
        return v

    @model_validator(mode="after")
    def _check_mask(self) -> "Flavour":
        if self.mask.source == "buffers" and not self.mask.weight_mask_suffix:
            raise ValueError("mask.source 'buffers' needs mask.weight_mask_suffix")
        return self


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"invalid regex {pattern!r}: {err}") from None
    return pattern


# ---------------------------------------------------------------- loading flavour files

FLAVOURS: Registry[Flavour] = Registry("checkpoint flavour")
_RAW: dict[str, dict] = {}  # name -> raw YAML mapping, for `extends`


def _read_raw(path: Path) -> dict:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a flavour file must be a YAML mapping")
    return data


def _resolve_extends(data: dict, *, source: str, lookup: Mapping[str, dict], seen: tuple[str, ...] = ()) -> dict:
    """`extends: base` copies every field of flavour `base` except name/description/method/detect."""
    if "extends" not in data:
        return data
    base_name = data["extends"]
    if not isinstance(base_name, str):
        raise UserError(f"{source}: key 'extends' must name a registered flavour, got {base_name!r}")
    if base_name in seen or base_name == data.get("name"):
        raise UserError(f"{source}: 'extends' cycle through {base_name!r}")
    if base_name not in lookup:
        raise UserError(f"{source}: key 'extends': " + unknown_name_message("checkpoint flavour", base_name, sorted(lookup)))
    base = _resolve_extends(lookup[base_name], source=source, lookup=lookup, seen=seen + (base_name,))
    inherited = {k: v for k, v in base.items() if k not in ("name", "description", "method", "detect")}
    return {**inherited, **{k: v for k, v in data.items() if k != "extends"}}


def _register_directory(directory: Path) -> None:
    raws = {}
    for path in sorted(directory.glob("*.yaml")):
        data = _read_raw(path)
        name = data.get("name", path.stem)
        if name in raws:
            raise UserError(f"{path}: flavour name {name!r} is already used by {raws[name][0]}")
        raws[name] = (path, data)
    lookup = {name: data for name, (_, data) in raws.items()}
    for name, (path, data) in raws.items():
        resolved = _resolve_extends(data, source=str(path), lookup=lookup)
        FLAVOURS.add(name, validate(resolved, Flavour, source=str(path)))
        _RAW[name] = data


def load_flavour(name_or_path: str | Path) -> Flavour:
    """A registered flavour by name, or a flavour YAML file (which may `extends:` a registered one)."""
    text = str(name_or_path)
    if text in FLAVOURS:
        return FLAVOURS.get(text)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        data = _read_raw(path)
        return validate(_resolve_extends(data, source=str(path), lookup=_RAW), Flavour, source=str(path))
    return FLAVOURS.get(text)  # raises the did-you-mean UserError


def all_trusted_globals() -> list[str]:
    """Union of every registered flavour's allow-list (used when the flavour is auto-detected)."""
    return sorted({g for name in FLAVOURS.names() for g in FLAVOURS.get(name).trusted_globals})


# ---------------------------------------------------------------- key pipeline


@dataclass
class NormalizedState:
    """A checkpoint's tensors in our naming, with masks split off (keys are parameter names)."""

    tensors: dict[str, torch.Tensor]
    weight_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    bias_masks: dict[str, torch.Tensor] = field(default_factory=dict)


def extract_state_dict(raw: Any, flavour: Flavour, *, source: str = "") -> tuple[dict[str, torch.Tensor], str | None]:
    """The first candidate of `flavour.state_dict_key` that is a {str: Tensor} mapping."""
    for key in flavour.state_dict_key:
        candidate = raw if key is None else (raw.get(key) if isinstance(raw, Mapping) else None)
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


# ---------------------------------------------------------------- auto-detection


def _field(raw: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(raw, Mapping) or part not in raw:
            return _MISSING
        raw = raw[part]
    return raw


_MISSING = object()


def rule_matches(rule: DetectRule, flavour: Flavour, raw: Any) -> bool:
    if not isinstance(raw, Mapping):
        return False
    if any(k not in raw for k in rule.top_level_keys) or any(k in raw for k in rule.absent_top_level_keys):
        return False
    for dotted, pattern in rule.fields.items():
        value = _field(raw, dotted)
        if value is _MISSING or not re.fullmatch(pattern, str(value)):
            return False
    if not (rule.required_keys or rule.forbidden_keys or rule.key_ndim):
        return True
    try:
        sd, _ = extract_state_dict(raw, flavour)
    except UserError:
        return False
    tensors = {}
    for key, value in sd.items():
        kind, name = split_key(key, flavour)
        if kind == "tensor":
            tensors[name] = value
    names = list(tensors)
    if not all(any(re.search(p, n) for n in names) for p in rule.required_keys):
        return False
    if any(re.search(p, n) for p in rule.forbidden_keys for n in names):
        return False
    for pattern, ndim in rule.key_ndim.items():
        hits = [tensors[n].dim() for n in names if re.search(pattern, n)]
        if not hits or any(d != ndim for d in hits):
            return False
    return True


def flavour_matches(flavour: Flavour, raw: Any) -> bool:
    return any(rule_matches(rule, flavour, raw) for rule in flavour.detect)


def detect_flavour(raw: Mapping, *, source: str = "") -> Flavour:
    """The unique registered flavour whose detect rules match `raw`; otherwise a UserError."""
    names = FLAVOURS.names()
    hits = [n for n in names if flavour_matches(FLAVOURS.get(n), raw)]
    where = f"{source}: " if source else ""
    if len(hits) == 1:
        derived = [n for n in names if _RAW.get(n, {}).get("extends") == hits[0]]
        log.info("detected checkpoint flavour %r%s", hits[0],
                 f" (same layout as {', '.join(derived)}: pass --checkpoint_flavour to label the method)" if derived else "")
        return FLAVOURS.get(hits[0])
    if hits:
        raise UserError(f"{where}the checkpoint matches several flavours ({', '.join(hits)}); "
                        f"pass --checkpoint_flavour with one of them")
    top = sorted(map(str, raw))[:8] if isinstance(raw, Mapping) else type(raw).__name__
    raise UserError(f"{where}could not recognise the checkpoint format (top-level keys: {top}); pass "
                    f"--checkpoint_flavour NAME (one of: {', '.join(names)}) or a flavour YAML path")


_register_directory(FLAVOUR_DIR)
