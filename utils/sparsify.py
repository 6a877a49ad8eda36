"""The Sparsify sparse-transfer experience, open: use case + data + optim level -> a deployable sparse model.

    run_sparse_transfer(SparseTransferOptions(use_case="ic", data="/data/flowers", optim_level=0.5))

Pieces, each usable alone: the use-case registry (`resolve_use_case`), the local model zoo
(`load_zoo`, configs/zoo.yaml), optim-level selection (`optim_target`, `select_model`, pure functions), and
the run (`run_sparse_transfer`): fine-tune with a recipe (utils.finetune), export ONNX (utils.export), time
the result against a dense model in ONNX Runtime, write summary.json + summary.md in the run directory.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import Field, field_validator, model_validator

from models import MODELS, build_model
from utils.config import StrictModel, read_yaml, validate
from utils.errors import UserError
from utils.registry import Registry, unknown_name_message

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ZOO = ROOT / "configs" / "zoo.yaml"
DEFAULT_TRAINER = ROOT / "configs" / "trainers" / "study_full_lr001.yaml"   # with a recipe: only the optimizer
RECIPE_INT8 = ROOT / "configs" / "recipes" / "sparse_transfer_resnet50.yaml"
RECIPE_FP32 = ROOT / "configs" / "recipes" / "sparse_transfer_fp32.yaml"

# ---------------------------------------------------------------- use cases


@dataclass(frozen=True)
class UseCase:
    """One Sparsify use case; `dataset` is the dataset registry entry its data is read with (None: unsupported)."""

    name: str
    label: str
    aliases: tuple[str, ...]
    dataset: str | None = None

    @property
    def supported(self) -> bool:
        return self.dataset is not None


USE_CASES: Registry[UseCase] = Registry("use case")
for _case in (
    UseCase("cv-classification", "image classification",
            ("ic", "classification", "image-classification", "img-classification"), dataset="imagefolder"),
    UseCase("cv-detection", "object detection", ("detection", "object-detection", "od")),
    UseCase("cv-segmentation", "image segmentation",
            ("segmentation", "image-segmentation", "instance-segmentation", "semantic-segmentation")),
    UseCase("nlp-question_answering", "question answering", ("question-answering", "qa")),
    UseCase("nlp-text_classification", "text classification", ("text-classification",)),
    UseCase("nlp-sentiment_analysis", "sentiment analysis", ("sentiment-analysis", "sentiment")),
    UseCase("nlp-token_classification", "token classification", ("token-classification",)),
    UseCase("nlp-named_entity_recognition", "named entity recognition", ("named-entity-recognition", "ner")),
):
    USE_CASES.add(_case.name, _case)


def normalize_use_case(name: str) -> str:
    """Case, '-', '_' and spaces do not matter: 'Image_Classification' == 'image-classification'."""
    return "".join(c for c in str(name).lower() if c not in "-_ ")


@functools.cache
def _alias_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for name in USE_CASES.names():
        for alias in (name, *USE_CASES.get(name).aliases):
            key = normalize_use_case(alias)
            if index.setdefault(key, name) != name:
                raise ValueError(f"use-case alias {alias!r} names both {index[key]!r} and {name!r}")
    return index


def supported_use_cases() -> str:
    return "; ".join(f"{c.name} (also {', '.join(c.aliases)})" for c in map(USE_CASES.get, USE_CASES.names())
                     if c.supported)


def resolve_use_case(name: str) -> UseCase:
    """The supported use case `name` (or an alias) names; unsupported/unknown ones raise listing what works."""
    canonical = _alias_index().get(normalize_use_case(name))
    if canonical is None:
        raise UserError(f"--use-case: {unknown_name_message('use case', name, USE_CASES.names())}; "
                        f"supported now: {supported_use_cases()}")
    case = USE_CASES.get(canonical)
    if not case.supported:
        raise UserError(f"--use-case {name!r} ({case.name}, {case.label}) is not supported yet; "
                        f"supported: {supported_use_cases()}")
    return case


# ---------------------------------------------------------------- the zoo


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


# ---------------------------------------------------------------- optim level -> model


Size = Literal["largest", "medium", "smallest"]


@dataclass(frozen=True)
class OptimTarget:
    """What an optim level asks for: a dense or pruned model, INT8 or not, and which size."""

    level: float
    pruned: bool
    int8: bool
    size: Size

    def describe(self) -> str:
        kind = "pruned" if self.pruned else "dense"
        return f"the {self.size} {kind} model" + (" + INT8" if self.int8 else ", fp32 (no optimizations)")


def optim_target(level: float) -> OptimTarget:
    """Sparsify's documented thresholds: 0 | < 0.25 | < 0.5 | < 0.75 | <= 1."""
    if not 0.0 <= level <= 1.0:
        raise UserError(f"--optim-level must be in [0, 1], got {level}")
    if level == 0.0:
        return OptimTarget(level, pruned=False, int8=False, size="largest")
    if level < 0.25:
        return OptimTarget(level, pruned=False, int8=True, size="largest")
    if level < 0.5:
        return OptimTarget(level, pruned=True, int8=True, size="largest")
    if level < 0.75:
        return OptimTarget(level, pruned=True, int8=True, size="medium")
    return OptimTarget(level, pruned=True, int8=True, size="smallest")


@dataclass(frozen=True)
class Selection:
    entry: ZooEntry
    target: OptimTarget
    note: str | None = None


def rank_by_size(entries: Sequence[ZooEntry], size: Size) -> ZooEntry:
    """Largest / upper-median / smallest by nonzero parameters (then parameters, then name)."""
    ordered = sorted(entries, key=lambda e: (e.nonzero_params, e.params, e.name))
    return {"largest": ordered[-1], "medium": ordered[len(ordered) // 2], "smallest": ordered[0]}[size]


def select_model(entries: Sequence[ZooEntry], level: float, *, zoo_path: str | Path = "the zoo") -> Selection:
    """The zoo entry optim level `level` asks for; without a dense/pruned one, the other kind (with a note)."""
    target = optim_target(level)
    if not entries:
        raise UserError(empty_zoo_message(zoo_path))
    pool = [e for e in entries if e.pruned == target.pruned]
    note = None
    if not pool:
        pool = list(entries)
        have, want = ("dense", "pruned") if target.pruned else ("pruned", "dense")
        note = (f"{zoo_path} has no {want} model for optim-level {level:g}, which asks for {target.describe()}; "
                f"using the {target.size} {have} model instead")
    preferred = [e for e in pool if e.quantized == target.int8]
    chosen = rank_by_size(preferred or pool, target.size)
    if note:
        note += f" ({chosen.name})"
    return Selection(entry=chosen, target=target, note=note)


# ---------------------------------------------------------------- the run
