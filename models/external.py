"""Architectures from timm and torchvision by name: `timm:deit_small_patch16_224`, `tv:convnext_tiny`.

The libraries build the models (any number of classes, their own layer names, so their checkpoints' keys load as
they are); this module gives each built model the interface of the project's own (models/base.py):

  classifier_name      timm's `pretrained_cfg["classifier"]` (ViT 'head', ConvNeXt 'head.fc', EfficientNet
                       'classifier'); torchvision's last nn.Linear ('fc', 'classifier.2', 'heads.head')
  feature_dim          the width of the classifier's input (timm: its `head_hidden_size`, which differs from its
                       `num_features` where a pre-logits layer sits before the classifier, as in MobileNetV3)
  pooled_features(x)   what the classifier reads: timm's `forward_head(forward_features(x), pre_logits=True)`
                       (the model's own pooling: CLS token or mean, as it defines); torchvision's classifier input
  reset_classifier(n)  timm's own; torchvision's last Linear replaced
  default_input_size   the size the model was built for (a ViT's patch embedding fixes it), else its config's
  input_config         interpolation and normalisation of its pretrained config (timm's `pretrained_cfg`,
                       torchvision's default weights' transforms), recorded by a run

The libraries are imported on first use: a command that never names one does not pay for it.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import re
from typing import Any, Callable

import torch
from torch import nn

from utils.errors import UserError

PREFIXES = {"timm": "timm", "tv": "torchvision"}
SHOW = 3     # close names suggested for a typo


def library(prefix: str):
    """The library a prefix names, imported; one line when it is missing."""
    name = PREFIXES[prefix]
    try:
        return importlib.import_module(name if prefix == "timm" else "torchvision.models")
    except ImportError:
        raise UserError(f"architecture '{prefix}:...' needs the {name} package: pip install {name}") from None


def list_external(prefix: str) -> list[str]:
    """Every architecture name the library offers, prefixed ('timm:vit_base_patch16_224', ...)."""
    lib = library(prefix)
    names = lib.list_models() if prefix == "timm" else lib.list_models(module=lib)
    return [f"{prefix}:{n}" for n in names]


@functools.lru_cache(maxsize=None)
def resolve(prefix: str, name: str) -> Callable[..., nn.Module]:
    """The factory of `prefix:name` (build_model calls it with num_classes and any model arguments)."""
    known = [n.split(":", 1)[1] for n in list_external(prefix)]
    if name not in known:
        close = difflib.get_close_matches(name, known, n=SHOW, cutoff=0.6)
        hint = f" (did you mean {', '.join(f'{prefix}:{c}' for c in close)}?)" if close else ""
        raise UserError(f"unknown {PREFIXES[prefix]} architecture '{prefix}:{name}'{hint}; "
                        f"`python main.py --list-archs` lists all {len(known)}")

    def factory(num_classes: int, **model_args: Any) -> nn.Module:
        return build(prefix, name, num_classes, model_args)

    factory.task = "classification"
    return factory


def build(prefix: str, name: str, num_classes: int, model_args: dict[str, Any]) -> nn.Module:
    """The library's model, random weights, with the project's interface; one line for arguments it refuses."""
    lib = library(prefix)
    try:
        if prefix == "timm":
            return adapt(lib.create_model(name, pretrained=False, num_classes=num_classes, **model_args), TimmModel)
        model = adapt(lib.get_model(name, weights=None, num_classes=num_classes, **model_args), TorchvisionModel)
    except TypeError as err:
        raise UserError(f"{prefix}:{name}: model arguments {sorted(model_args)} not accepted ({err})") from None
    model.input_config, model.default_input_size = torchvision_inputs(lib, name)
    if "image_size" in model_args:          # a ViT built for another size
        model.default_input_size = int(model_args["image_size"])
    return model


def torchvision_inputs(models, name: str) -> tuple[dict[str, Any], int]:
    """(interpolation and normalisation, input size) of the architecture's default weights' transforms (their
    metadata only: nothing downloads); ImageNet's bilinear 224 px where it has no weights."""
    try:
        preset = models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, AttributeError, KeyError):
        return dict(TorchvisionModel.input_config), TorchvisionModel.default_input_size
    crop = preset.crop_size[0] if isinstance(preset.crop_size, (list, tuple)) else preset.crop_size
    return {"interpolation": preset.interpolation.value,
            "normalization": {"mean": list(preset.mean), "std": list(preset.std)}}, int(crop)


_ADAPTED: dict[tuple[type, type], type] = {}


def adapt(model: nn.Module, mixin: type) -> nn.Module:
    """The same module (same parameters, same state-dict keys), its class given the project's interface."""
    cls = type(model)
    key = (mixin, cls)
    if key not in _ADAPTED:
        _ADAPTED[key] = type(cls.__name__, (mixin, cls), {"__module__": cls.__module__,
                                                           "__qualname__": cls.__qualname__})
    model.__class__ = _ADAPTED[key]
    return model


class TimmModel:
    """The project's model interface on a timm model (mixed in before timm's class)."""

    task = "classification"

    @property
    def classifier_names(self) -> tuple[str, ...]:
        """The head module(s): a distilled DeiT has two ('head', 'head_dist')."""
        names = self.pretrained_cfg.get("classifier") or "head"
        return tuple(names) if isinstance(names, (tuple, list)) else (names,)

    @property
    def classifier_name(self) -> str:
        return self.classifier_names[0]

    @property
    def head_keys(self) -> list[str]:
        """Regexes of the state-dict keys a transfer replaces: every head's weight and bias."""
        return [rf"^{re.escape(name)}\.(weight|bias)$" for name in self.classifier_names]

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), pre_logits=True)

    @property
    def feature_dim(self) -> int:
        return int(getattr(self, "head_hidden_size", None) or self.num_features)

    @property
    def default_input_size(self) -> int:
        size = getattr(getattr(self, "patch_embed", None), "img_size", None)
        if size:
            return int(size[0] if isinstance(size, (tuple, list)) else size)
        return int(self.pretrained_cfg.get("input_size", (3, 224, 224))[-1])

    @property
    def input_config(self) -> dict[str, Any]:
        cfg = self.pretrained_cfg
        return {"interpolation": cfg.get("interpolation", "bicubic"),
                "normalization": {"mean": list(cfg.get("mean", (0.485, 0.456, 0.406))),
                                  "std": list(cfg.get("std", (0.229, 0.224, 0.225)))}}


class TorchvisionModel:
    """The project's model interface on a torchvision classifier (mixed in before its class)."""

    task = "classification"
    default_input_size = 224

    @property
    def classifier_name(self) -> str:
        linear = [name for name, m in self.named_modules() if isinstance(m, nn.Linear)]
        if not linear:
            raise UserError(f"{type(self).__name__}: no nn.Linear classifier to replace")
        return linear[-1]

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    @property
    def num_features(self) -> int:
        return self.get_classifier().in_features

    @property
    def feature_dim(self) -> int:
        return self.num_features

    def reset_classifier(self, num_classes: int) -> None:
        """The last Linear replaced by a fresh one with `num_classes` outputs."""
        old = self.get_classifier()
        parent, _, child = self.classifier_name.rpartition(".")
        head = nn.Linear(old.in_features, num_classes).to(device=old.weight.device, dtype=old.weight.dtype)
        setattr(self.get_submodule(parent) if parent else self, child, head)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's input, caught on its way in (torchvision models have no separate feature call)."""
        seen: list[torch.Tensor] = []
        hook = self.get_classifier().register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        try:
            self(x)
        finally:
            hook.remove()
        return seen[-1]

    # set per model from its default weights' transforms (build_torchvision)
    input_config: dict[str, Any] = {"interpolation": "bilinear",
                                    "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
