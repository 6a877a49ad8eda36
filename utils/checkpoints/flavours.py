"""Checkpoint flavours: a YAML file per family of upstream checkpoints says how its files are read.

A user supports a new family by writing YAML (configs/checkpoints/<name>.yaml), not code. The key
pipeline a flavour drives, in order (see `utils.checkpoints.state.normalize_state`):
  1. pick the state dict: the first of `state_dict_key` present (null = the top level itself);
  2. strip `strip_prefixes` (e.g. DataParallel's `module.`), repeatedly;
  3. split off mask buffers (`X<weight_mask_suffix>` is the mask of `X.weight`) and unwrap wrapped
     layers (`X._layer.weight` -> `X.weight`); STR soft thresholds are applied and consumed;
  4. apply `renames` (ordered regex -> replacement, each to the result of the previous) to every key.
`detect` rules look at the keys after step 3 (before renames); see `utils.checkpoints.detect`.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field, field_validator, model_validator

from models import MODELS
from utils.config import StrictModel, read_yaml, validate
from utils.errors import UserError
from utils.paths import FLAVOUR_DIR
from utils.registry import Registry, unknown_name_message

log = logging.getLogger(__name__)

# Modules whose callables would let a pickle run arbitrary code; never accepted as trusted globals.
DENIED_MODULES = {"os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "builtins", "runpy", "pickle",
                   "marshal", "ctypes", "code", "pty", "socket", "webbrowser"}
DENIED_NAMES = {"torch.load", "torch.serialization.load", "torch.hub.load", "torch.jit.load", "numpy.load"}


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
    key_shape: dict[str, list[int]] = {}  # regex -> shape every matching tensor has (at least one must match)

    @field_validator("required_keys", "forbidden_keys")
    @classmethod
    def _regex_list(cls, v: list[str]) -> list[str]:
        return [check_regex(p) for p in v]

    @field_validator("fields")
    @classmethod
    def _regex_values(cls, v: dict[str, str]) -> dict[str, str]:
        return {k: check_regex(p) for k, p in v.items()}

    @field_validator("key_ndim", "key_shape")
    @classmethod
    def _regex_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        return {check_regex(p): n for p, n in v.items()}


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
    recipe_key: str | None = None  # a top-level entry holding the recipe text the file was trained with (SparseML)
    # Classes of pickled nn.Module objects (YOLOv5's own .pt files): always replaced by inert stand-ins that only
    # keep the pickled attributes; the state dict is read from their tensors, none of their code exists here.
    module_globals: list[str] = []

    @field_validator("state_dict_key", mode="before")
    @classmethod
    def _as_list(cls, v: Any) -> Any:
        return [v] if v is None or isinstance(v, str) else v

    @field_validator("renames")
    @classmethod
    def _renames(cls, v: dict[str, str]) -> dict[str, str]:
        for p in v:
            check_regex(p)
        return v

    @field_validator("classifier_keys")
    @classmethod
    def _classifier(cls, v: list[str]) -> list[str]:
        return [check_regex(p) for p in v]

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

    @field_validator("trusted_globals", "module_globals")
    @classmethod
    def _globals(cls, v: list[str]) -> list[str]:
        for name in v:
            if "." not in name:
                raise ValueError(f"trusted global {name!r} must be a dotted 'module.Name'")
            if name.split(".")[0] in DENIED_MODULES or name in DENIED_NAMES:
                raise ValueError(f"trusted global {name!r} is refused: it could run arbitrary code")
        return v

    @model_validator(mode="after")
    def _check_mask(self) -> "Flavour":
        if self.mask.source == "buffers" and not self.mask.weight_mask_suffix:
            raise ValueError("mask.source 'buffers' needs mask.weight_mask_suffix")
        return self


def check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"invalid regex {pattern!r}: {err}") from None
    return pattern


# ---------------------------------------------------------------- loading flavour files

# the shipped flavours, read on first use (not at import: a broken flavour file fails what reads flavours, with its
# name and key); a flavour YAML elsewhere is read with load_flavour(path)
FLAVOURS: Registry[Flavour] = Registry("checkpoint flavour", loader=lambda: register_flavour_directory(FLAVOUR_DIR))
RAW_FLAVOURS: dict[str, dict] = {}  # name -> raw YAML mapping, for `extends`


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
        raise UserError(f"{source}: key 'extends': "
                        + unknown_name_message("checkpoint flavour", base_name, sorted(lookup)))
    base = _resolve_extends(lookup[base_name], source=source, lookup=lookup, seen=seen + (base_name,))
    inherited = {k: v for k, v in base.items() if k not in ("name", "description", "method", "detect")}
    return {**inherited, **{k: v for k, v in data.items() if k != "extends"}}


def register_flavour_directory(directory: Path) -> None:
    """Register every flavour YAML of `directory` (a flavour may `extends:` another of the same folder)."""
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
        RAW_FLAVOURS[name] = data


def load_flavour(name_or_path: str | Path) -> Flavour:
    """A registered flavour by name, or a flavour YAML file (which may `extends:` a registered one)."""
    text = str(name_or_path)
    if text in FLAVOURS:
        return FLAVOURS.get(text)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        data = _read_raw(path)
        return validate(_resolve_extends(data, source=str(path), lookup=RAW_FLAVOURS), Flavour, source=str(path))
    return FLAVOURS.get(text)  # raises the did-you-mean UserError


def all_module_globals() -> list[str]:
    """Every registered flavour's module_globals (auto-detection reads a file before knowing its flavour)."""
    return sorted({g for name in FLAVOURS.names() for g in FLAVOURS.get(name).module_globals})


def all_trusted_globals() -> list[str]:
    """Union of every registered flavour's allow-list (used when the flavour is auto-detected)."""
    return sorted({g for name in FLAVOURS.names() for g in FLAVOURS.get(name).trusted_globals})
