"""Detectors in ONNX: the exported graph outputs the decoded predictions (N, boxes, 5 + classes), as YOLOv5's
export does; the check runs the same NMS on both sides and matches the boxes."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

from utils.detection.postprocess import non_max_suppression

# a box "agrees" when the other side has one of the same class at this IoU or more (COCO's match)
MATCH_IOU = 0.5
TOP_BOXES = 20           # per image, the torch model's most confident boxes after NMS are looked for


class DecodedOnly(nn.Module):
    """The detector's eval-mode output without the raw maps (what a deployment consumes)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def box_agreement(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> tuple[float, int]:
    """(fraction of `theirs` boxes matched by a box of `ours` with the same class at IoU >= MATCH_IOU, count)."""
    matched, total = 0, 0
    for a, b in zip(ours, theirs):
        total += len(b)
        if len(a) and len(b):
            iou = box_iou(b[:, :4], a[:, :4]) * (b[:, 5:6] == a[:, 5].view(1, -1))
            matched += int((iou.max(1).values >= MATCH_IOU).sum())
    return (matched / total if total else 1.0), total


@torch.no_grad()
def compare_detections(model: nn.Module, run: Callable[[np.ndarray], np.ndarray], inputs: torch.Tensor,
                       *, batch_size: int = 16) -> dict[str, float]:
    """Max |difference| of the decoded outputs (pixels and scores) and the agreement of the boxes after NMS: the
    torch model's 20 most confident boxes per image that the exported model (`run`: images -> decoded outputs)
    also finds (same class, IoU >= 0.5; both sides through the same NMS at YOLOv5's validation settings)."""
    model.eval()
    device = next(model.parameters()).device
    diffs, ref_dets, ort_dets = [], [], []
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size]
        ref = model(x.to(device))[0].float().cpu()
        out = torch.from_numpy(np.asarray(run(x.cpu().numpy())))
        diffs.append(float((out - ref).abs().max()))
        ref_dets += [d[:TOP_BOXES] for d in non_max_suppression(ref)]      # sorted by confidence
        ort_dets += non_max_suppression(out)
    agreement, boxes = box_agreement(ort_dets, ref_dets)
    return {"max_abs_diff": max(diffs), "box_agreement": agreement, "boxes": boxes, "num_samples": int(len(inputs)),
            "top1_agreement": agreement}
