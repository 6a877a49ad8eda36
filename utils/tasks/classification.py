"""Image classification: the study's task. Cross-entropy and top-1 accuracy on the test split; exported files
are checked by their logits and top-1 agreement."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from policies.tasks import ClassificationTask, Task
from utils.data import DatasetSplits, load_datasets
from utils.tasks.base import TaskKind


class Classification(TaskKind):
    name = "classification"
    score = "val_acc"                 # the paper's column: top-1 accuracy on the test split after the last epoch
    short = "acc"
    model_noun = "classifier"
    summary_fields = {"accuracy": "val_acc"}
    output_name = "logits"

    def dataset_label(self, dataset: str, dataset_path: str | None) -> str:
        """A user's ImageFolder tree by its folder's name (two trees never share a row); else the registry name."""
        if dataset == "imagefolder" and dataset_path:
            return Path(dataset_path).expanduser().resolve().name or dataset
        return dataset

    def load_splits(self, dataset: str, dataset_path: str | None, *, image_size: int | None = None,
                    interpolation: str = "bilinear", mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, max_train_samples: int | None = None, seed: int = 0,
                    mosaic: float = 0.0, augment: bool = True, verify: bool = True) -> DatasetSplits:
        return load_datasets(dataset, dataset_path, image_size=image_size, interpolation=interpolation, mean=mean,
                             std=std, max_train_samples=max_train_samples, seed=seed, augment=augment,
                             verify=verify)

    def loop_task(self, model: nn.Module, *, image_size: int, label_smoothing: float) -> Task:
        return ClassificationTask(label_smoothing=label_smoothing)

    @torch.no_grad()
    def compare_exported(self, model: nn.Module, run: Callable[[np.ndarray], np.ndarray], inputs: torch.Tensor,
                         *, batch_size: int = 32) -> dict[str, Any]:
        """Max |logit difference| and top-1 agreement."""
        model.eval()
        device = next(model.parameters()).device
        diffs, agree = [], []
        for start in range(0, len(inputs), batch_size):
            x = inputs[start:start + batch_size]
            ref = model(x.to(device)).float().cpu().numpy()
            out = run(x.cpu().numpy())
            diffs.append(float(np.abs(out - ref).max()))
            agree.append(out.argmax(1) == ref.argmax(1))
        return {"max_abs_diff": max(diffs), "top1_agreement": float(np.concatenate(agree).mean()),
                "num_samples": int(len(inputs))}
