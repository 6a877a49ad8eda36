"""The detection task for the Manager: YOLOv5's loss in training, NMS + COCO mAP on the test split."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from policies.tasks import Task, autocast_for
from policies.trainer import BIAS_GROUP
from utils.detection.loss import YoloLoss
from utils.detection.metrics import DetectionMetric
from utils.detection.postprocess import non_max_suppression


def raw_outputs(outputs: Any) -> list[torch.Tensor]:
    """The three raw maps, from a training-mode (list) or eval-mode ((decoded, raw)) output."""
    return outputs[1] if isinstance(outputs, tuple) else outputs


class DetectionTask(Task):
    """Loss and metrics of a YOLOv5 detector; targets are (boxes, 6): image index, class, cx, cy, w, h."""

    name = "detection"
    metric = "map"
    loss_grows_with_batch = True     # YOLOv5's loss: summed over accumulated batches, as YOLOv5 does

    def __init__(self, model: nn.Module, *, imgsz: int, conf_thres: float = 0.001, iou_thres: float = 0.6):
        self.criterion = YoloLoss(model.get_classifier(), imgsz=imgsz)
        self.conf_thres, self.iou_thres = conf_thres, iou_thres

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        return yolov5_param_groups(model, weight_decay)

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(raw_outputs(outputs), targets)

    def update_stats(self, stats: dict[str, Any], outputs: Any, targets: Any, loss: torch.Tensor) -> None:
        images = raw_outputs(outputs)[0].shape[0]
        stats["loss"] += loss.detach()          # YOLOv5's loss is already a sum over the batch's images
        stats["seen"] += images

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, *,
                 precision: str = "fp32") -> dict[str, float]:
        was_training = model.training
        model.eval()
        metric = DetectionMetric(self.criterion.head.nc)
        total_loss, seen = 0.0, 0
        for images, targets in loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with autocast_for(device, precision):
                decoded, raw = model(images)
            total_loss += float(self.criterion([r.float() for r in raw], targets))
            seen += images.shape[0]
            detections = non_max_suppression(decoded.float(), conf_thres=self.conf_thres, iou_thres=self.iou_thres)
            metric.update(detections, targets, image_size=images.shape[-1])
        model.train(was_training)
        result = metric.compute()
        return {"test_loss": total_loss / max(seen, 1), "map": result["map"], "map50": result["map50"],
                "map75": result["map75"], "ap_per_class": result["ap_per_class"]}


def yolov5_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """YOLOv5's three groups, in its order (recipes' `param_groups` index them): 0 BatchNorm weights without
    decay, 1 other weights with decay, 2 biases without decay."""
    norms, weights, biases = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                biases.append(p)
            elif isinstance(module, torch.nn.modules.batchnorm._NormBase):
                norms.append(p)
            else:
                weights.append(p)
    return [{"params": norms, "weight_decay": 0.0}, {"params": weights, "weight_decay": weight_decay},
            {"params": biases, "weight_decay": 0.0, "name": BIAS_GROUP}]
