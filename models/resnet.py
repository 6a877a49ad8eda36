"""ImageNet ResNets whose state_dict keys equal torchvision's, so torchvision/timm checkpoints load as is."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.resnet import ResNet as _TorchvisionResNet

from models.base import MODELS, ClassifierMixin


class ResNet(ClassifierMixin, _TorchvisionResNet):
    """torchvision's ResNet (never with downloaded weights) plus the shared head interface.

    `stem_pool_pad` (left, right, top, bottom) zero-pads before a padding-0 max-pool, as the
    TensorFlow ResNet behind the RigL checkpoints does ("SAME" pooling); it adds no state-dict keys.
    """

    classifier_name = "fc"
    default_input_size = 224

    def __init__(self, block: type[nn.Module], layers: Sequence[int], *, num_classes: int = 1000,
                 stem_pool_pad: Sequence[int] | None = None):
        super().__init__(block, list(layers), num_classes=num_classes)
        self.num_features = self.fc.in_features
        if stem_pool_pad is not None:
            pad = tuple(int(p) for p in stem_pool_pad)
            if len(pad) != 4 or min(pad) < 0:
                raise ValueError("stem_pool_pad must be 4 non-negative ints (left, right, top, bottom), "
                                 f"got {stem_pool_pad}")
            self.maxpool = nn.Sequential(nn.ZeroPad2d(pad), nn.MaxPool2d(kernel_size=3, stride=2, padding=0))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def _register(name: str, block: type[nn.Module], layers: Sequence[int]) -> None:
    def factory(num_classes: int = 1000, stem_pool_pad: Sequence[int] | None = None) -> ResNet:
        return ResNet(block, layers, num_classes=num_classes, stem_pool_pad=stem_pool_pad)

    factory.__name__ = name
    factory.__doc__ = f"{name} (torchvision key names); stem_pool_pad e.g. [0, 1, 0, 1] for RigL."
    MODELS.add(name, factory)


_register("resnet18", BasicBlock, (2, 2, 2, 2))
_register("resnet34", BasicBlock, (3, 4, 6, 3))
_register("resnet50", Bottleneck, (3, 4, 6, 3))
_register("resnet101", Bottleneck, (3, 4, 23, 3))
_register("resnet152", Bottleneck, (3, 8, 36, 3))
