"""CIFAR-style ResNet for 28-32 px inputs: 3x3 stride-1 stem, no max-pool, 3 stages of BasicBlocks.

Keys follow torchvision's naming (conv1, bn1, layerK.N.conv1/bn1/conv2/bn2, layerK.0.downsample.0/1, fc),
so the same flavour machinery and masks code apply. Fast on CPU; used by the demo and the tests.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from models.base import MODELS, ClassifierMixin


class SmallResNet(ClassifierMixin, nn.Module):
    classifier_name = "fc"
    default_input_size = 32

    def __init__(self, *, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64),
                 blocks: Sequence[int] = (1, 1, 1)):
        super().__init__()
        if len(widths) != len(blocks) or not widths or min(blocks) < 1 or min(widths) < 1:
            raise ValueError(f"widths and blocks must be equally long positive lists, got {widths} and {blocks}")
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for i, (planes, count) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(count):
                downsample = None
                if j == 0 and (stride != 1 or inplanes != planes):
                    downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                               nn.BatchNorm2d(planes))
                layers.append(BasicBlock(inplanes, planes, stride if j == 0 else 1, downsample))
                inplanes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = inplanes
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)


@MODELS.register("resnet_small")
def resnet_small(num_classes: int = 10, widths: Sequence[int] = (16, 32, 64),
                 blocks: Sequence[int] = (1, 1, 1)) -> SmallResNet:
    """Tiny CIFAR-style ResNet (default 1 block per stage, widths 16/32/64)."""
    return SmallResNet(num_classes=num_classes, widths=widths, blocks=blocks)


@MODELS.register("resnet20")
def resnet20(num_classes: int = 10, widths: Sequence[int] = (16, 32, 64)) -> SmallResNet:
    """The CIFAR ResNet-20 depth (3 blocks per stage) with 1x1-projection shortcuts."""
    return SmallResNet(num_classes=num_classes, widths=widths, blocks=(3, 3, 3))
