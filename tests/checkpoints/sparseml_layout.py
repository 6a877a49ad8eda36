"""Stand-ins for SparseML's own ResNet and MobileNet-V1 classes (sparseml.pytorch.models.classification), written
from their definitions: the same module tree (so the same state-dict keys), the same forward pass, and the same
`save_model` container. SparseML itself cannot be installed next to current torch; these make the fixtures."""
from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)


class Input(nn.Module):
    def __init__(self, *, resnet: bool):
        super().__init__()
        self.conv, self.bn = conv_bn(3, 64, 7, 2) if resnet else conv_bn(3, 32, 3, 2)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, 1) if resnet else None

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        return self.pool(x) if self.pool is not None else x


class Identity(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class Bottleneck(nn.Module):
    """SparseML's _BottleneckBlock: 1x1, 3x3 (stride here), 1x1; identity when channels or stride change."""

    def __init__(self, cin: int, cout: int, proj: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, proj, 1)
        self.conv2, self.bn2 = conv_bn(proj, proj, 3, stride)
        self.conv3, self.bn3 = conv_bn(proj, cout, 1)
        self.identity = Identity(cin, cout, stride) if cin != cout or stride > 1 else None

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu((self.identity(x) if self.identity is not None else x) + out)


class Classifier(nn.Module):
    def __init__(self, cin: int, num_classes: int, pool: nn.Module, dropout: float | None = None):
        super().__init__()
        self.avgpool = pool
        self.fc = nn.Linear(cin, num_classes)
        if dropout is not None:
            self.fc = nn.Sequential(nn.Dropout(dropout), self.fc)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        logits = self.fc(self.avgpool(x).flatten(1))
        return logits, self.softmax(logits)


class ResNet50(nn.Module):
    """sparseml resnet50: sections of 3, 4, 6, 3 bottlenecks; forward returns (logits, softmax)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.input = Input(resnet=True)
        settings = [(3, 64, 256, 64, False), (4, 256, 512, 128, True), (6, 512, 1024, 256, True),
                    (3, 1024, 2048, 512, True)]
        sections = []
        for blocks, cin, cout, proj, down in settings:
            stride = 2 if down else 1
            section = []
            for _ in range(blocks):
                section.append(Bottleneck(cin, cout, proj, stride))
                cin, stride = cout, 1
            sections.append(nn.Sequential(*section))
        self.sections = nn.Sequential(*sections)
        self.classifier = Classifier(2048, num_classes, nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return self.classifier(self.sections(self.input(x)))


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int):
        super().__init__()
        self.conv, self.bn = conv_bn(cin, cout, k, stride, groups)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.depth = ConvBNReLU(cin, cin, 3, stride, cin)
        self.point = ConvBNReLU(cin, cout, 1, 1, 1)

    def forward(self, x):
        return self.point(self.depth(x))


class MobileNet(nn.Module):
    """sparseml mobilenet (v1): sections of 1, 2, 2, 6, 2 blocks, AvgPool2d(7) head."""

    def __init__(self, num_classes: int = 1000, dropout: float | None = None):
        super().__init__()
        self.input = Input(resnet=False)
        settings = [(1, 32, 64, False), (2, 64, 128, True), (2, 128, 256, True), (6, 256, 512, True),
                    (2, 512, 1024, True)]
        sections = []
        for blocks, cin, cout, down in settings:
            stride = 2 if down else 1
            section = []
            for _ in range(blocks):
                section.append(Block(cin, cout, stride))
                cin, stride = cout, 1
            sections.append(nn.Sequential(*section))
        self.sections = nn.Sequential(*sections)
        self.classifier = Classifier(1024, num_classes, nn.AvgPool2d(7), dropout)

    def forward(self, x):
        return self.classifier(self.sections(self.input(x)))


def randomize_(model: nn.Module, *, sparsity: float, seed: int) -> None:
    """Random weights and BatchNorm statistics; the convs' and fc's smallest weights zeroed to `sparsity`."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))
                module.num_batches_tracked.fill_(1000)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                w = module.weight
                w.copy_(torch.randn(w.shape, generator=gen) * (2.0 / w[0].numel()) ** 0.5)
                if getattr(module, "groups", 1) == 1 and w.numel() > 64:
                    cut = w.abs().flatten().kthvalue(int(sparsity * w.numel())).values
                    w[w.abs() <= cut] = 0.0
                if module.bias is not None:
                    module.bias.copy_(0.01 * torch.randn(module.bias.shape, generator=gen))


def save_sparseml_container(path, model: nn.Module, *, arch_key: str, recipe: str | None, epoch: int = 9) -> None:
    """SparseML's `save_model`: every state tensor copied into a float32 tensor, plus optimizer, recipe, epoch."""
    state = {}
    for key, value in model.state_dict().items():
        copy = torch.zeros(value.shape)
        copy.copy_(value)
        state[key] = copy
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    payload = {"state_dict": state, "optimizer": optimizer.state_dict(), "epoch": epoch, "arch_key": arch_key}
    if recipe is not None:
        payload["recipe"] = recipe
    torch.save(payload, path)
