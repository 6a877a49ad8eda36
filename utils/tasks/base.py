"""The interface of a task plug-in: everything a run, an export or a summary does differently for one task.

A stage never asks "is this detection?"; it asks `task_of(...)` for the plug-in and calls it. A new task
(segmentation, ...) is a subclass registered in `utils/tasks/__init__.py`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from policies.tasks import Task
from utils.data import DatasetSplits


class TaskKind:
    """One task's specifics. Subclasses set the attributes and implement the methods marked abstract."""

    name = "task"
    score = "val_acc"                  # the result record's column (results.csv) the task is ranked by
    short = "score"                    # its name in a command's closing line
    model_noun = "model"               # what its models are called in messages
    # The quality figures a command's summary gives: its name -> the result record's column.
    summary_fields: Mapping[str, str] = {}
    extra_columns = False              # its rows fill results.csv's optional columns (a detector's mAPs)
    accepts_mosaic = False             # trainer configs may ask for mosaic augmentation
    output_name = "output"             # the exported ONNX graph's output
    # How the inputs are prepared, where the task fixes it (else the upstream's settings hold).
    fixed_inputs: Mapping[str, Any] = {}

    def data_source(self, dataset: str, dataset_path: str | None) -> str | None:
        """What names the data on disk (a detector's data.yaml; a classifier's dataset name)."""
        return dataset

    def dataset_label(self, dataset: str, dataset_path: str | None) -> str:
        """The dataset's name in run names and result rows, when the user gave none."""
        return dataset

    def load_splits(self, dataset: str, dataset_path: str | None, *, image_size: int | None = None,
                    interpolation: str = "bilinear", mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, max_train_samples: int | None = None, seed: int = 0,
                    mosaic: float = 0.0, augment: bool = True, verify: bool = True) -> DatasetSplits:
        """The train and test splits, prepared at these input settings (`augment=False`: the train split gets the
        test transform, for feature extraction; a detector's val split is never augmented)."""
        raise NotImplementedError

    def loop_task(self, model: nn.Module, *, image_size: int, label_smoothing: float) -> Task:
        """What the Manager's loop learns: loss, training statistics, evaluation."""  # pragma: no cover - abstract
        raise NotImplementedError

    def fit_to_data_(self, model: nn.Module, data: DatasetSplits, *, image_size: int, seed: int) -> str | None:
        """Adapt the model to the downstream data before training (a detector's anchors); what was done, or None."""
        return None

    def sample_inputs(self, n: int, size: int, *, seed: int) -> torch.Tensor:
        """Images an exported file is compared on: normalised N(0, 1) pixels unless the task's inputs differ."""
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))

    def export_module(self, model: nn.Module) -> nn.Module:
        """The module whose outputs a deployment consumes."""
        return model

    def compare_exported(self, model: nn.Module, run: Callable[[np.ndarray], np.ndarray],
                         inputs: torch.Tensor) -> dict[str, Any]:  # pragma: no cover - abstract
        """How far the exported model (`run`: images -> its first output) is from torch on `inputs`."""
        raise NotImplementedError

    def summary(self, record: Mapping[str, Any]) -> dict[str, float]:
        """The quality figures of a result record, by their summary names."""
        return {name: float(record[column]) for name, column in self.summary_fields.items()}
