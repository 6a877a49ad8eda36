"""MobileNetV1 with the key layout of the AC/DC, STR and M-FAC code (`model.K.J.*`, `fc.*`).

`model` is an nn.Sequential: index 0 is conv_bn(3, 32, stride 2) = (conv3x3, BN, ReLU); indices 1..13 are
conv_dw blocks = (depthwise conv3x3, BN, ReLU, pointwise conv1x1, BN, ReLU); index 14 is the pooling
(adaptive here, so any input size works; the originals use AvgPool2d(7), which has no parameters).
`width_mult` follows the Distiller/AC/DC `channel_multiplier`: channels = max(floor(c * m), 8).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.base import MODELS, ClassifierMixin

# (output channels, stride) of the 13 depthwise-separable blocks.
_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
           (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


def _conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp), nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True),
    )


class MobileNetV1(ClassifierMixin, nn.Module):
    classifier_name = "fc"
    default_input_size = 224

    def __init__(self, *, num_classes: int = 1000, width_mult: float = 1.0):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")

        def width(c: int) -> int:
            return max(math.floor(c * width_mult), 8)

        layers, inp = [_conv_bn(3, width(32), 2)], width(32)
        for channels, stride in _BLOCKS:
            layers.append(_conv_dw(inp, width(channels), stride))
            inp = width(channels)
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.num_features = inp
        self.fc = nn.Linear(inp, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.model(x), 1)


@MODELS.register("mobilenet")
def mobilenet(num_classes: int = 1000, width_mult: float = 1.0) -> MobileNetV1:
    """MobileNetV1 (AC/DC / STR / M-FAC key layout)."""
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult)
