"""YOLOv5's training loss: anchors matched by shape ratio (< anchor_t) in the target's cell and its two nearest
neighbours, CIoU box loss, objectness BCE towards the IoU, class BCE, per-scale objectness balance.

The gains are YOLOv5's hyperparameters (hyp.scratch-low: box 0.05, obj 1.0, cls 0.5, anchor_t 4.0) scaled as
its train.py scales them for the number of layers, classes and the image size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import complete_box_iou_loss

BALANCE = (4.0, 1.0, 0.4)           # objectness weight of the P3, P4, P5 outputs
NEIGHBOURS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)
CELL_OFFSET = 0.5


@dataclass(frozen=True)
class LossGains:
    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.5
    anchor_t: float = 4.0

    def scaled(self, *, layers: int, num_classes: int, imgsz: int) -> "LossGains":
        """train.py's scaling: box by 3/layers, cls by classes/80 * 3/layers, obj by (imgsz/640)^2 * 3/layers."""
        k = 3 / layers
        return LossGains(box=self.box * k, cls=self.cls * num_classes / 80 * k, obj=self.obj * (imgsz / 640) ** 2 * k,
                         anchor_t=self.anchor_t)


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    xy, wh = boxes[..., :2], boxes[..., 2:4]
    return torch.cat((xy - wh / 2, xy + wh / 2), -1)


class YoloLoss(nn.Module):
    """`loss(raw_outputs, targets)` -> the summed loss times the batch size (YOLOv5's convention); the parts are
    in `.last` (box, obj, cls)."""

    def __init__(self, head: nn.Module, *, imgsz: int, gains: LossGains = LossGains()):
        super().__init__()
        self.head = head                       # the Detect layer: anchors (stride units), na, nl, nc
        self.gains = gains.scaled(layers=head.nl, num_classes=head.nc, imgsz=imgsz)
        self.bce = nn.BCEWithLogitsLoss()
        self.last: dict[str, float] = {}

    def forward(self, outputs: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        device = outputs[0].device
        lbox, lobj, lcls = (torch.zeros((), device=device) for _ in range(3))
        for i, (pred, (b, a, gj, gi, tbox, anchors, tcls)) in enumerate(zip(outputs, self.match(outputs, targets))):
            tobj = torch.zeros(pred.shape[:4], dtype=pred.dtype, device=device)
            if len(b):
                ps = pred[b, a, gj, gi]
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anchors
                loss = complete_box_iou_loss(xywh_to_xyxy(torch.cat((pxy, pwh), 1)), xywh_to_xyxy(tbox),
                                             reduction="none", eps=1e-7)
                lbox = lbox + loss.mean()
                tobj[b, a, gj, gi] = (1.0 - loss).detach().clamp(0).to(tobj.dtype)    # objectness target: the IoU
                if self.head.nc > 1:
                    t = torch.zeros_like(ps[:, 5:])
                    t[torch.arange(len(b), device=device), tcls] = 1.0
                    lcls = lcls + self.bce(ps[:, 5:], t)
            lobj = lobj + self.bce(pred[..., 4], tobj) * BALANCE[i]
        g = self.gains
        lbox, lobj, lcls = lbox * g.box, lobj * g.obj, lcls * g.cls
        self.last = {"box": float(lbox.detach()), "obj": float(lobj.detach()), "cls": float(lcls.detach())}
        return (lbox + lobj + lcls) * outputs[0].shape[0]

    @torch.no_grad()
    def match(self, outputs: list[torch.Tensor], targets: torch.Tensor):
        """Per output layer: (image, anchor, grid y, grid x) of every matched prediction, its target box
        (xy offset in the cell, wh in grid units), its anchor (grid units) and its class."""
        head, device = self.head, targets.device
        na, nt = head.na, targets.shape[0]
        anchor_index = torch.arange(na, device=device).float().view(na, 1).repeat(1, nt)
        t_all = torch.cat((targets.repeat(na, 1, 1), anchor_index[..., None]), 2)    # (na, nt, 7)
        offsets = NEIGHBOURS.to(device) * CELL_OFFSET
        matched = []
        for i, pred in enumerate(outputs):
            anchors = head.anchors[i]
            ny, nx = pred.shape[2:4]
            gain = torch.tensor([1, 1, nx, ny, nx, ny, 1], device=device, dtype=t_all.dtype)
            t = t_all * gain
            off = torch.zeros_like(t[:1, :, :2])[0]
            if nt:
                ratio = t[..., 4:6] / anchors[:, None]
                t = t[torch.max(ratio, 1 / ratio).max(2)[0] < self.gains.anchor_t]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy
                j, k = ((gxy % 1 < CELL_OFFSET) & (gxy > 1)).T
                l, m = ((gxi % 1 < CELL_OFFSET) & (gxi > 1)).T  # noqa: E741 (the reference's j, k, l, m)
                select = torch.stack((torch.ones_like(j), j, k, l, m))
                t = t.repeat((5, 1, 1))[select]
                off = (torch.zeros_like(gxy)[None] + offsets[:, None])[select]
            else:
                t = t_all[0] * 0
            b, c = t[:, :2].long().T
            gxy, gwh, a = t[:, 2:4], t[:, 4:6], t[:, 6].long()
            gij = (gxy - off).long()
            gi, gj = gij[:, 0].clamp_(0, nx - 1), gij[:, 1].clamp_(0, ny - 1)
            matched.append((b, a, gj, gi, torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1), anchors[a], c))
        return matched
