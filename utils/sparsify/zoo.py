"""The local model zoo (configs/zoo.yaml): upstream checkpoints tagged with architecture, sparsity, quantization."""
from __future__ import annotations

import functools
import json
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
        out.append(entry.model_copy(update={"path": str(file),
                                            "params": entry.params or backbone_params(entry.arch, entry.arch_kwargs)}))
    return out


def empty_zoo_message(path: str | Path) -> str:
    return (f"{path} lists no models; add one entry per upstream checkpoint you have under 'models:', e.g. "
            "'- {name: acdc_resnet50_90, path: ckpts/acdc_resnet50_90.pth, arch: resnet50, sparsity: 0.9}' "
            f"(fields are explained at the top of {path}), or pass --model CKPT")
