"""YOLOv5 (the v6.0+ architecture), sizes n/s/m/l/x, with the reference implementation's module tree.

`model` is an nn.Sequential of 25 layers whose state-dict names are the reference's (`model.0.conv.weight`,
`model.2.cv1.conv.weight`, `model.2.m.0.cv1.conv.weight`, `model.24.m.0.weight`, `model.24.anchors`), so recipes
naming `model.0` ... `model.23` and state dicts saved from YOLOv5 fit without renaming:

    0 Conv 6x6/2 (P1)   1 Conv 3x3/2 (P2)   2 C3   3 Conv/2 (P3)   4 C3   5 Conv/2 (P4)   6 C3   7 Conv/2 (P5)
    8 C3   9 SPPF   10 Conv 1x1   11 Upsample   12 Concat(-1, 6)   13 C3   14 Conv 1x1   15 Upsample
    16 Concat(-1, 4)   17 C3 (P3 out)   18 Conv/2   19 Concat(-1, 14)   20 C3 (P4 out)   21 Conv/2
    22 Concat(-1, 10)   23 C3 (P5 out)   24 Detect(17, 20, 23)

What a state dict does not carry is fixed here as the reference sets it: BatchNorm eps 1e-3 and momentum 0.03,
strides 8/16/32, anchors stored in stride units (the `anchors` buffer), the Detect biases' prior.
In training mode the model returns the three raw maps (N, 3, H, W, 5 + classes); in eval mode
(decoded boxes (N, boxes, 5 + classes) in pixels as cx, cy, w, h, objectness, class scores; the raw maps).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.base import MODELS

ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))
STRIDES = (8.0, 16.0, 32.0)
SIZES = {"n": (0.33, 0.25), "s": (0.33, 0.50), "m": (0.67, 0.75), "l": (1.0, 1.0), "x": (1.33, 1.25)}
# (from, repeats, module, args) of the v6.0 backbone and head, in the reference's units (before the multiples).
LAYOUT = [
    (-1, 1, "Conv", (64, 6, 2, 2)), (-1, 1, "Conv", (128, 3, 2)), (-1, 3, "C3", (128,)),
    (-1, 1, "Conv", (256, 3, 2)), (-1, 6, "C3", (256,)), (-1, 1, "Conv", (512, 3, 2)), (-1, 9, "C3", (512,)),
    (-1, 1, "Conv", (1024, 3, 2)), (-1, 3, "C3", (1024,)), (-1, 1, "SPPF", (1024, 5)),
    (-1, 1, "Conv", (512, 1, 1)), (-1, 1, "Upsample", ()), ((-1, 6), 1, "Concat", ()), (-1, 3, "C3", (512, False)),
    (-1, 1, "Conv", (256, 1, 1)), (-1, 1, "Upsample", ()), ((-1, 4), 1, "Concat", ()), (-1, 3, "C3", (256, False)),
    (-1, 1, "Conv", (256, 3, 2)), ((-1, 14), 1, "Concat", ()), (-1, 3, "C3", (512, False)),
    (-1, 1, "Conv", (512, 3, 2)), ((-1, 10), 1, "Concat", ()), (-1, 3, "C3", (1024, False)),
    ((17, 20, 23), 1, "Detect", ()),
]


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU, 'same' padding."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convolutions: cv3(cat(m(cv1(x)), cv2(x)))."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        hidden = int(c2 * 0.5)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(c1, hidden, 1, 1)
        self.cv3 = Conv(2 * hidden, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools (= SPP with 5, 9, 13)."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1)


class Detect(nn.Module):
    """Per scale a 1x1 conv to anchors x (5 + classes); in eval mode also the decoded boxes (YOLOv5's formulas)."""

    def __init__(self, num_classes: int, channels: tuple[int, ...], anchors=ANCHORS, strides=STRIDES):
        super().__init__()
        self.nc, self.no = num_classes, num_classes + 5
        self.nl, self.na = len(anchors), len(anchors[0]) // 2
        self.strides = tuple(float(s) for s in strides)
        self.register_buffer("stride", torch.tensor(self.strides), persistent=False)
        anchor_pixels = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        self.register_buffer("anchors", anchor_pixels / self.stride.view(-1, 1, 1))   # stride units, as saved
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)
        self.initialize_biases()

    @property
    def out_features(self) -> int:
        """The class count, under the name classification heads (nn.Linear) give it."""
        return self.nc

    @torch.no_grad()
    def initialize_biases(self) -> None:
        """The reference's prior: objectness for ~8 objects per 640 image, class scores ~0.6 / classes."""
        for conv, s in zip(self.m, self.strides):
            b = conv.bias.view(self.na, -1)
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            b[:, 5:] += math.log(0.6 / (self.nc - 0.99999))

    def forward(self, xs: list[torch.Tensor]):
        raw, decoded = [], []
        for i, x in enumerate(xs):
            x = self.m[i](x)
            bs, _, ny, nx = x.shape
            x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(x)
            if not self.training:
                grid, anchor_grid = self._grid(nx, ny, i, x.dtype)
                xy, wh, conf = x.sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + grid) * self.stride[i]
                wh = (wh * 2) ** 2 * anchor_grid
                decoded.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return raw if self.training else (torch.cat(decoded, 1), raw)

    def _grid(self, nx: int, ny: int, i: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.anchors.device
        y, x = torch.arange(ny, device=device, dtype=dtype), torch.arange(nx, device=device, dtype=dtype)
        yv, xv = torch.meshgrid(y, x, indexing="ij")
        shape = (1, self.na, ny, nx, 2)
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2).expand(shape)
        return grid, anchor_grid


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def build_layers(num_classes: int, depth: float, width: float) -> tuple[nn.Sequential, set[int]]:
    """The 25 layers from LAYOUT scaled by the depth/width multiples; each layer carries `.f` (its inputs) and
    `.i`; returns (layers, the indices whose outputs later layers read)."""
    channels: list[int] = [3]
    layers, saved = [], set()
    for i, (source, repeats, kind, args) in enumerate(LAYOUT):
        n = max(round(repeats * depth), 1) if repeats > 1 else repeats
        c1 = channels[source] if isinstance(source, int) else None
        if kind in ("Conv", "C3", "SPPF"):
            c2 = make_divisible(args[0] * width, 8)
            if kind == "Conv":
                layer = Conv(c1, c2, *args[1:])
            elif kind == "C3":
                layer = C3(c1, c2, n, *args[1:])
            else:
                layer = SPPF(c1, c2, *args[1:])
        elif kind == "Upsample":
            layer, c2 = nn.Upsample(None, 2, "nearest"), c1
        elif kind == "Concat":
            layer, c2 = Concat(), sum(channels[j] if j == -1 else channels[j + 1] for j in source)
        else:
            layer, c2 = Detect(num_classes, tuple(channels[j + 1] for j in source)), 0
        layer.f, layer.i = source, i
        saved.update(j % i for j in ([source] if isinstance(source, int) else source) if j != -1)
        layers.append(layer)
        channels.append(c2)
    return nn.Sequential(*layers), saved


class YOLOv5(nn.Module):
    """A YOLOv5 detector (see the module docstring); `reset_classifier(n)` rebuilds the Detect head for n classes."""

    task = "detection"
    classifier_name = "model.24"
    head_keys = (r"^model\.24\.m\.\d+\.(weight|bias)$",)      # the anchors stay with the model
    default_input_size = 640

    def __init__(self, *, num_classes: int = 80, depth_multiple: float = 0.33, width_multiple: float = 0.5):
        super().__init__()
        self.depth_multiple, self.width_multiple = depth_multiple, width_multiple
        self.model, self.saved = build_layers(num_classes, depth_multiple, width_multiple)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03

    @property
    def num_classes(self) -> int:
        return self.model[-1].nc

    def get_classifier(self) -> Detect:
        return self.model[-1]

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh Detect head for `num_classes` (the reference's bias prior); the anchors are kept."""
        old = self.model[-1]
        head = Detect(num_classes, tuple(c.in_channels for c in old.m))
        head.anchors.copy_(old.anchors)
        head.f, head.i = old.f, old.i
        self.model[-1] = head.to(old.anchors.device)

    def forward(self, x: torch.Tensor):
        outputs: list[torch.Tensor | None] = []
        for layer in self.model:
            if layer.f != -1:
                x = outputs[layer.f] if isinstance(layer.f, int) else [x if j == -1 else outputs[j] for j in layer.f]
            x = layer(x)
            outputs.append(x if layer.i in self.saved else None)
        return x


def _register(size: str) -> None:
    depth, width = SIZES[size]

    def build(num_classes: int = 80, depth_multiple: float = depth, width_multiple: float = width) -> YOLOv5:
        return YOLOv5(num_classes=num_classes, depth_multiple=depth_multiple, width_multiple=width_multiple)

    build.task = YOLOv5.task
    build.classes_from_head = lambda rows: rows // (len(ANCHORS[0]) // 2) - 5    # anchors x (box, obj, classes)
    MODELS.register(f"yolov5{size}")(build)


for _size in SIZES:
    _register(_size)
