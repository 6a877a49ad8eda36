"""From decoded predictions to detections: YOLOv5's confidence filter and class-aware NMS (torchvision.ops)."""
from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from utils.detection.loss import xywh_to_xyxy

MAX_CANDIDATES = 30000     # boxes kept for NMS per image, by confidence (YOLOv5's max_nms)


def non_max_suppression(decoded: torch.Tensor, *, conf_thres: float = 0.001, iou_thres: float = 0.6,
                        max_det: int = 300, multi_label: bool = False) -> list[torch.Tensor]:
    """Per image (n, 6): x1, y1, x2, y2, confidence (objectness x class score), class; as YOLOv5's
    `non_max_suppression` (its defaults for validation: conf 0.001, IoU 0.6, 300 boxes)."""
    out = []
    for x in decoded:
        x = x[x[:, 4] > conf_thres]
        scores = x[:, 5:] * x[:, 4:5]
        box = xywh_to_xyxy(x[:, :4])
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[i], scores[i, j, None], j[:, None].float()), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            x = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        x = x[x[:, 4].argsort(descending=True)[:MAX_CANDIDATES]]
        keep = batched_nms(x[:, :4], x[:, 4], x[:, 5].long(), iou_thres)[:max_det]
        out.append(x[keep])
    return out
