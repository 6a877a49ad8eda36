"""This project's checkpoint format: state dict, masks, and the metadata to rebuild the model, all plain data."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn

from models import classifier_outputs
from utils.checkpoints.flavours import Normalization
from utils.config import StrictModel, validate
from utils.io import atomic_torch_save

NATIVE_FORMAT = "sparse-transfer-checkpoint"
NATIVE_VERSION = 1


class NativeHeader(StrictModel):
    """The metadata of a native file (beside state_dict, masks and extra)."""

    format: Literal["sparse-transfer-checkpoint"]
    version: Literal[1]
    arch: str
    arch_kwargs: dict[str, Any] = {}
    num_classes: int | None = None
    normalization: Normalization = "dataset"
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"


def _plain(obj: Any) -> bool:
    if isinstance(obj, (str, int, float, bool, type(None), torch.Tensor)):
        return True
    if isinstance(obj, (list, tuple)):
        return all(_plain(x) for x in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in obj.items())
    return False


def save_native_checkpoint(path: str | Path, model: nn.Module, *, arch: str, arch_kwargs: Mapping[str, Any] | None,
                           masks: Mapping[str, torch.Tensor] | None = None, normalization: Any = None,
                           interpolation: str = "bilinear", extra: Mapping[str, Any] | None = None) -> None:
    """Write `model` in this project's format (atomically); `load_checkpoint` reads it with flavour 'native'."""
    payload = {
        "format": NATIVE_FORMAT, "version": NATIVE_VERSION, "arch": arch, "arch_kwargs": dict(arch_kwargs or {}),
        "num_classes": classifier_outputs(model) if hasattr(model, "get_classifier") else int(model.fc.out_features),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "normalization": normalization if normalization is not None else "dataset",
        "interpolation": interpolation,
    }
    if masks is not None:
        payload["masks"] = {k: m.detach().cpu().bool().clone() for k, m in masks.items()}
    if extra:
        payload["extra"] = dict(extra)
    if not _plain(payload):
        raise ValueError("native checkpoints hold only tensors and plain str/int/float/bool/list/dict values")
    validate({k: payload[k] for k in NativeHeader.model_fields}, NativeHeader, source=str(path))
    atomic_torch_save(path, payload)
