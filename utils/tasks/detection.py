"""Object detection (YOLOv5 on YOLO-format data): the data is a data.yaml, images are [0, 1] pixels at a square
size, the loop learns YOLOv5's loss and is scored by COCO mAP, anchors are refitted to the data's boxes, and the
exported graph gives the decoded predictions, checked by box agreement after NMS."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from policies.tasks import Task
from utils.data import DatasetSplits, load_detection_datasets
from utils.data.verify import image_sizes
from utils.data.yolo import yolo_dataset_name
from utils.detection.anchors import check_anchors_
from utils.detection.export_check import DecodedOnly, compare_detections
from utils.detection.task import DetectionTask
from utils.errors import UserError
from utils.tasks.base import TaskKind


class Detection(TaskKind):
    name = "detection"
    score = "map"                      # mAP@0.5:0.95 on the data.yaml's val split
    short = "mAP"
    model_noun = "detector"
    summary_fields = {"map": "map", "map50": "map50"}
    extra_columns = True
    accepts_mosaic = True
    output_name = "predictions"
    fixed_inputs = {"interpolation": "bilinear", "normalization": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}}

    def data_source(self, dataset: str, dataset_path: str | None) -> str | None:
        """The data.yaml: `--dset yolo --dset_path data.yaml`, or `--dset data.yaml`."""
        return dataset_path if dataset == "yolo" else dataset

    def dataset_label(self, dataset: str, dataset_path: str | None) -> str:
        data_yaml = self.data_source(dataset, dataset_path)
        return yolo_dataset_name(data_yaml) if data_yaml else dataset

    def load_splits(self, dataset: str, dataset_path: str | None, *, image_size: int | None = None,
                    interpolation: str = "bilinear", mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, max_train_samples: int | None = None, seed: int = 0,
                    mosaic: float = 0.0, augment: bool = True, verify: bool = True) -> DatasetSplits:
        path = self.data_source(dataset, dataset_path)
        if path is None:
            raise UserError("--dset yolo needs --dset_path pointing at the dataset's data.yaml")
        return load_detection_datasets(path, imgsz=image_size or 640, max_train_samples=max_train_samples, seed=seed,
                                       mosaic=mosaic, verify=verify)

    def loop_task(self, model: nn.Module, *, image_size: int, label_smoothing: float) -> Task:
        return DetectionTask(model, imgsz=image_size)

    def fit_to_data_(self, model: nn.Module, data: DatasetSplits, *, image_size: int, seed: int) -> str | None:
        """YOLOv5's autoanchor: the anchors checked against the data's boxes, refitted where they fit badly."""
        known = image_sizes([Path(image) for image, _ in data.train.items], root=data.root)   # the check's cache
        return check_anchors_(model.get_classifier(), data.train.items, data.train.labels, imgsz=image_size,
                              seed=seed, image_wh=known)

    def sample_inputs(self, n: int, size: int, *, seed: int) -> torch.Tensor:
        """[0, 1] pixels: a detector takes them unnormalised."""
        return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))

    def export_module(self, model: nn.Module) -> nn.Module:
        return DecodedOnly(model)

    def compare_exported(self, model: nn.Module, run: Callable[[np.ndarray], np.ndarray],
                         inputs: torch.Tensor) -> dict[str, Any]:
        return compare_detections(model, run, inputs)
