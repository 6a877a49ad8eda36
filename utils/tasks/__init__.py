"""The tasks this project trains -- image classification and object detection -- as plug-ins, and the one place
that decides which task an architecture, a dataset argument, a built model or a result record belongs to.

    kind = task(arch="yolov5s")              # the Detection plug-in (the architecture's factory says so)
    kind = task(dataset="data.yaml")         # --dset yolo, or a data.yaml given as --dset
    kind.load_splits(...), kind.loop_task(...), kind.compare_exported(...), kind.summary(record)
    task_of(record=row)                      # a results row: its `task` column -> 'classification'

What differs between tasks is a method of the plug-in (`utils/tasks/base.py` lists them); a new task is a
subclass registered here.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from models import model_task
from utils.data import is_detection_dataset
from utils.registry import Registry
from utils.tasks.base import TaskKind
from utils.tasks.classification import Classification
from utils.tasks.detection import Detection

CLASSIFICATION, DETECTION = Classification.name, Detection.name

TASKS: Registry[TaskKind] = Registry("task")
TASKS.add(CLASSIFICATION, Classification())
TASKS.add(DETECTION, Detection())


def task_of(*, arch: str | None = None, dataset: str | None = None, model: nn.Module | None = None,
            record: Mapping[str, Any] | None = None) -> str:
    """The task's name for exactly one of: an architecture name, a dataset argument (`--dset`), a built model, a
    result record (result.json / a results.csv row)."""
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


def task(**one: Any) -> TaskKind:
    """The plug-in of task_of(...)."""
    return TASKS.get(task_of(**one))


__all__ = ["CLASSIFICATION", "DETECTION", "TASKS", "TaskKind", "task", "task_of"]
