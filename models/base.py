"""The architecture registry and the interface every model here shares.

Every registered model is an `nn.Module` with:
  classifier_name     module name of the classifier (e.g. "fc")
  num_features        width of the pooled features fed to the classifier
  default_input_size  the input side length it was designed for (224, or 32 for small nets)
  forward_features(x) -> (N, num_features) globally average-pooled features
  pooled_features(x)  -> the same: what the classifier reads (timm and torchvision models: models/external.py)
  feature_dim         its width (num_features here; a timm model with a pre-logits layer: that layer's)
  reset_classifier(n) replaces the classifier with a fresh dense nn.Linear(num_features, n)
Detectors (`task = "detection"`, models/yolov5.py) share classifier_name / get_classifier / reset_classifier
(their head is the Detect layer) and default_input_size, not the pooled features.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Callable

import torch
from torch import nn

from utils.errors import UserError
from utils.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture")


class ClassifierMixin:
    """Shared head handling: `forward` = classifier(forward_features(x))."""

    task: str = "classification"
    classifier_name: str = "fc"
    num_features: int
    default_input_size: int = 224

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        return self.num_features

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """What the classifier reads (a linear probe's features): here the pooled forward_features; timm models
        keep their own forward_features (unpooled) and pool in their head (models/external.py)."""
        return self.forward_features(x)

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised dense Linear layer."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        old = self.get_classifier()
        head = nn.Linear(self.num_features, num_classes)
        ref = next(old.parameters(), None)
        if ref is not None:
            head = head.to(device=ref.device, dtype=ref.dtype)
        setattr(self, self.classifier_name, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.get_classifier()(self.forward_features(x))


def classifier_outputs(model: nn.Module) -> int:
    """How many outputs the classifier has: a Linear's out_features, or a 1x1 conv head's out_channels (timm's DLA,
    DPN)."""
    head = model.get_classifier()
    outputs = getattr(head, "out_features", None) or getattr(head, "out_channels", None)
    if outputs is None:
        raise TypeError(f"{type(head).__name__} classifier: neither out_features nor out_channels")
    return int(outputs)


def head_key_patterns(model: nn.Module) -> list[str]:
    """Regexes of the state-dict keys of the classifier a transfer replaces (a detector: its Detect convs)."""
    explicit = getattr(model, "head_keys", None)
    return list(explicit) if explicit else [rf"^{re.escape(model.classifier_name)}\.(weight|bias)$"]


def model_task(arch: str) -> str:
    """'classification' or 'detection' (a detector's factory says so), without building the model."""
    return getattr(MODELS.get(arch), "task", "classification")


def classes_from_head(arch: str, rows: int) -> int:
    """The class count a stored head of `rows` output rows means (a detector's head also predicts boxes)."""
    return getattr(MODELS.get(arch), "classes_from_head", lambda n: n)(rows)


def architectures(task: str) -> list[str]:
    """The registered architectures of one task."""
    return [name for name in MODELS.names() if model_task(name) == task]


def build_model(arch: str, num_classes: int, **arch_kwargs: Any) -> nn.Module:
    """Instantiate a registered architecture with a `num_classes`-way classifier."""
    factory = MODELS.get(arch)
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = sorted(n for n in params if n != "num_classes")
        unknown = sorted(set(arch_kwargs) - set(valid))
        if unknown:
            raise UserError(f"architecture {arch!r} does not accept arch_kwargs {unknown}; "
                            f"valid: {', '.join(valid) or '(none)'}")
    return factory(num_classes=num_classes, **arch_kwargs)
