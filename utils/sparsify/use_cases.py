"""Sparsify's use cases and their aliases; `dataset` names the dataset registry entry a use case's data is read
with (None: not supported yet)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from utils.errors import UserError
from utils.registry import Registry, unknown_name_message


@dataclass(frozen=True)
class UseCase:
    """One Sparsify use case; `dataset` is the dataset registry entry its data is read with (None: unsupported);
    `task` the model task its zoo entries must have; `recipes` the default (INT8, fp32) recipes and `trainer` the
    trainer config (file names under configs/; None: the classification defaults)."""

    name: str
    label: str
    aliases: tuple[str, ...]
    dataset: str | None = None
    task: str = "classification"
    recipes: tuple[str, str] | None = None
    trainer: str | None = None

    @property
    def supported(self) -> bool:
        return self.dataset is not None


USE_CASES: Registry[UseCase] = Registry("use case")
for _case in (
    UseCase("cv-classification", "image classification",
            ("ic", "classification", "image-classification", "img-classification"), dataset="imagefolder"),
    UseCase("cv-detection", "object detection", ("detection", "object-detection", "od"), dataset="yolo",
            task="detection", recipes=("yolov5_sparse_transfer.yaml", "yolov5_sparse_transfer_fp32.yaml"),
            trainer="yolov5_finetune.yaml"),
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
