"""The tasks this project trains -- image classification and object detection -- and the one place that decides
which task an architecture, a dataset argument, a built model or a result record belongs to (`task_of`). What
differs between them (splits, loss and evaluation, parameter groups, result fields, the export check) still lives
with each stage; this is where a stage asks.

    task_of(arch="yolov5s")          # 'detection' (the architecture's factory says so)
    task_of(dataset="data.yaml")     # 'detection' (--dset yolo, or a data.yaml given as --dset)
    is_detection(record=row)         # a results row: its `task` column
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from models import model_task
from utils.data import is_detection_dataset
from utils.registry import Registry

CLASSIFICATION, DETECTION = "classification", "detection"


@dataclass(frozen=True)
class TaskSpec:
    """What a task's results are scored by: the result record's column (results.csv's) and its short name (a
    command's closing line). The analysis labels the same columns itself: it reads results without torch."""

    name: str
    score: str
    short: str


TASKS: Registry[TaskSpec] = Registry("task")
TASKS.add(CLASSIFICATION, TaskSpec(CLASSIFICATION, "val_acc", "acc"))
TASKS.add(DETECTION, TaskSpec(DETECTION, "map", "mAP"))


def task_of(*, arch: str | None = None, dataset: str | None = None, model: nn.Module | None = None,
            record: Mapping[str, Any] | None = None) -> str:
    """The task of exactly one of: an architecture name, a dataset argument (`--dset`), a built model, a result
    record (result.json / a results.csv row)."""
    given = [k for k, v in (("arch", arch), ("dataset", dataset), ("model", model), ("record", record))
             if v is not None]
    if len(given) != 1:
        raise TypeError(f"task_of takes exactly one of arch, dataset, model, record; got {given or 'none'}")
    if arch is not None:
        return model_task(arch)
    if dataset is not None:
        return DETECTION if is_detection_dataset(dataset) else CLASSIFICATION
    if model is not None:
        return getattr(model, "task", None) or CLASSIFICATION
    return record.get("task") or CLASSIFICATION


def is_detection(**one: Any) -> bool:
    """task_of(...) == DETECTION."""
    return task_of(**one) == DETECTION


__all__ = ["CLASSIFICATION", "DETECTION", "TASKS", "TaskSpec", "is_detection", "task_of"]
