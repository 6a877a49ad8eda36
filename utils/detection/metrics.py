"""Detection metrics by a well-kept library: COCO's mAP@0.5:0.95, mAP@0.5 and per-class AP (torchmetrics'
MeanAveragePrecision over pycocotools), COCO's definitions throughout."""
from __future__ import annotations

from typing import Any

import torch

from utils.detection.loss import xywh_to_xyxy

MAX_DETECTIONS = (1, 10, 100)      # COCO's; its mAP counts the 100 most confident boxes per image


class DetectionMetric:
    """Accumulate detections and ground truth image by image; `compute()` -> map, map50, map75, per-class AP."""

    def __init__(self, num_classes: int):
        # imported here: torchmetrics takes ~3 s to import, which every classification run would pay otherwise
        from torchmetrics.detection import MeanAveragePrecision

        self.num_classes = num_classes
        self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True,
                                           max_detection_thresholds=list(MAX_DETECTIONS), backend="pycocotools")
        self.metric.warn_on_many_detections = False     # COCO scores the 100 most confident boxes; by design

    def update(self, detections: list[torch.Tensor], targets: torch.Tensor, *, image_size: int) -> None:
        """`detections`: per image (n, 6) x1 y1 x2 y2 conf class in pixels; `targets`: (m, 6) image, class,
        cx, cy, w, h normalised (the loader's format)."""
        preds, truth = [], []
        for index, det in enumerate(detections):
            det = det.detach().float().cpu()
            preds.append({"boxes": det[:, :4], "scores": det[:, 4], "labels": det[:, 5].long()})
            t = targets[targets[:, 0] == index].detach().float().cpu()
            truth.append({"boxes": xywh_to_xyxy(t[:, 2:6]) * image_size, "labels": t[:, 1].long()})
        self.metric.update(preds, truth)

    def compute(self) -> dict[str, Any]:
        result = self.metric.compute()
        per_class = {}
        classes = result.get("classes")
        if classes is not None and result["map_per_class"].numel() == classes.numel():
            per_class = {int(c): float(v) for c, v in zip(classes.reshape(-1), result["map_per_class"].reshape(-1))}
        return {"map": float(result["map"]), "map50": float(result["map_50"]), "map75": float(result["map_75"]),
                "ap_per_class": per_class}
