"""The local model zoo (configs/zoo.yaml): upstream checkpoints tagged with architecture, sparsity, quantization."""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator

from models import MODELS, build_model
from utils.config import StrictModel, read_yaml, validate
from utils.errors import UserError
from utils.paths import CONFIG_DIR
from utils.registry import unknown_name_message

DEFAULT_ZOO = CONFIG_DIR / "zoo.yaml"
ZOO_ENV = "SPARSE_TRANSFER_ZOO"      # another zoo file for the SparseML command lines (and tests)
STUB_PREFIX = "zoo:"


class ZooEntry(StrictModel):
    """One upstream checkpoint of configs/zoo.yaml (see the comments there for each field)."""

    name: str = Field(min_length=1)
    path: str
    flavour: str | None = None
    arch: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    sparsity: float = Field(ge=0, lt=1)
    quantized: bool = False
    params: int | None = Field(default=None, gt=0)   # backbone parameters; computed from arch when omitted
    stub: str | None = None                  # the SparseZoo stub this file was downloaded from ("zoo:cv/...")
    recipes: dict[str, str] = Field(default_factory=dict)   # SparseZoo recipe_type -> recipe file

    @field_validator("stub")
    @classmethod
    def _stub(cls, stub: str | None) -> str | None:
        return None if stub is None else split_stub(stub)[0]

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch not in MODELS:
            raise ValueError(unknown_name_message("architecture", arch, MODELS.names()))
        return arch

    @property
    def pruned(self) -> bool:
        return self.sparsity > 0

    @property
    def nonzero_params(self) -> float:
        assert self.params is not None, "sizes are filled by load_zoo"
        return self.params * (1.0 - self.sparsity)


class Zoo(StrictModel):
    models: list[ZooEntry] = Field(default_factory=list)

    @field_validator("models", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value   # 'models:' with every entry commented out

    @model_validator(mode="after")
    def _unique_names(self) -> "Zoo":
        names = [m.name for m in self.models]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"model name {dup!r} appears twice; names must be unique")
        return self


@functools.cache
def _backbone_params(arch: str, kwargs_json: str) -> int:
    with torch.device("meta"):   # shapes only: no memory, no initialisation cost
        model = build_model(arch, num_classes=1, **json.loads(kwargs_json))
    head = model.classifier_name + "."
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(head))


def backbone_params(arch: str, arch_kwargs: dict[str, Any] | None = None) -> int:
    """Parameters of `arch` without its classifier (the part that transfers)."""
    return _backbone_params(arch, json.dumps(arch_kwargs or {}, sort_keys=True))


def load_zoo(path: str | Path) -> list[ZooEntry]:
    """Validated zoo entries, paths made relative to the zoo file, sizes filled in."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: zoo file not found; create it like configs/zoo.yaml or pass --model CKPT")
    zoo = validate(read_yaml(path), Zoo, source=str(path))
    out = []
    for entry in zoo.models:
        file = Path(entry.path).expanduser()
        file = file if file.is_absolute() else path.parent / file
        recipes = {kind: str(_beside(path, recipe)) for kind, recipe in entry.recipes.items()}
        out.append(entry.model_copy(update={"path": str(file), "recipes": recipes,
                                            "params": entry.params or backbone_params(entry.arch, entry.arch_kwargs)}))
    return out


def _beside(zoo_file: Path, path: str) -> Path:
    file = Path(path).expanduser()
    return file if file.is_absolute() else zoo_file.parent / file


def default_zoo_path() -> Path:
    """$SPARSE_TRANSFER_ZOO when set, else configs/zoo.yaml."""
    return Path(os.environ.get(ZOO_ENV) or DEFAULT_ZOO)


def split_stub(text: str) -> tuple[str, dict[str, str]]:
    """'zoo:cv/.../pruned-moderate?recipe_type=transfer_learn' -> ('cv/.../pruned-moderate', {'recipe_type': ...})."""
    body = text.removeprefix(STUB_PREFIX).strip().strip("/")
    stub, _, query = body.partition("?")
    options = dict(part.split("=", 1) if "=" in part else (part, "") for part in query.split("&") if part)
    return stub, options


def registration_hint(stub: str, zoo_path: Path, *, what: str) -> str:
    """How to register a downloaded SparseZoo file under its stub (one line)."""
    example = {"model": f"{{name: my_model, stub: '{STUB_PREFIX}{stub}', path: model.pth, arch: resnet50, "
                        "sparsity: 0.85}",
               "recipe": f"{{name: my_model, stub: '{STUB_PREFIX}{stub}', path: model.pth, arch: resnet50, "
                         "sparsity: 0.85, recipes: {original: recipe.md, transfer_learn: recipe_transfer.md}}"}[what]
    return (f"{STUB_PREFIX}{stub} is not in the local zoo {zoo_path} (nothing is downloaded here); download the "
            f"{what} file yourself and register it under 'models:' as - {example} (or set ${ZOO_ENV} to another "
            "zoo file)")


def find_stub(text: str, zoo_path: Path | None = None, *, what: str = "model") -> ZooEntry:
    """The zoo entry registered under a SparseZoo stub; one line saying how to register it when missing."""
    zoo_path = zoo_path or default_zoo_path()
    stub, _ = split_stub(text)
    entries = load_zoo(zoo_path) if zoo_path.is_file() else []
    found = next((e for e in entries if e.stub == stub), None)
    if found is None:
        raise UserError(registration_hint(stub, zoo_path, what=what))
    return found


def resolve_recipe(text: str, zoo_path: Path | None = None) -> str:
    """A recipe path, or for a 'zoo:STUB?recipe_type=T' stub the file registered as that entry's recipe T
    (SparseZoo's default type: 'original')."""
    if not text.startswith(STUB_PREFIX):
        return text
    entry = find_stub(text, zoo_path, what="recipe")
    kind = split_stub(text)[1].get("recipe_type", "original")
    if kind not in entry.recipes:
        zoo_path = zoo_path or default_zoo_path()
        raise UserError(f"{text}: zoo entry {entry.name!r} in {zoo_path} has no recipe of type {kind!r} "
                        f"(it has: {', '.join(sorted(entry.recipes)) or 'none'}); add 'recipes: {{{kind}: FILE}}' "
                        "to the entry")
    return entry.recipes[kind]


def empty_zoo_message(path: str | Path) -> str:
    return (f"{path} lists no models; add one entry per upstream checkpoint you have under 'models:', e.g. "
            "'- {name: acdc_resnet50_90, path: ckpts/acdc_resnet50_90.pth, arch: resnet50, sparsity: 0.9}' "
            f"(fields are explained at the top of {path}), or pass --model CKPT")
