"""Checkpoints as timm, Hugging Face and torchvision users have them, read into the native layout.

    FOLDER/                      a timm / Hugging Face model folder: config.json + model.safetensors (or
                                 pytorch_model.bin, or one *.safetensors / *.pth / *.pt / *.bin file)
    FILE.safetensors             read with the safetensors package (never pickle); a config.json beside it is used
    FILE.pth / .pt / .bin        a state dict, plain or under 'state_dict' / 'model' / 'state_dict_ema'
                                 (weights_only=True), when a config.json beside it or --arch names its architecture

config.json is timm's (`save_for_hf` / `push_to_hf_hub`): `architecture`, `num_classes`, `model_args` (how the model
was built), `pretrained_cfg` (mean, std, interpolation, input size). Without one, the architecture comes from
--arch (timm:NAME, tv:NAME or one of the project's); a file that names none gets one line saying so. What comes
out is a native-format mapping, so the strict loader checks every key and shape as for any other file, and the
masks come from the zeros.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from utils.checkpoints.files import read_checkpoint_file
from utils.checkpoints.native import NATIVE_FORMAT, NATIVE_VERSION
from utils.errors import UserError

log = logging.getLogger(__name__)

WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
STATE_KEYS = ("state_dict", "model", "state_dict_ema")     # where training scripts wrap the weights
INTERPOLATIONS = ("bilinear", "bicubic")


def weights_file(path: Path) -> Path:
    """The weights in a model folder: model.safetensors, else pytorch_model.bin, else its single weights file."""
    for name in WEIGHT_NAMES:
        if (path / name).is_file():
            return path / name
    found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(found) != 1:
        what = f"{len(found)} weight files ({', '.join(p.name for p in found[:4])})" if found else "no weights file"
        raise UserError(f"{path}: a model folder needs model.safetensors or pytorch_model.bin (or one "
                        f"*.safetensors / *.pth file); it has {what}")
    return found[0]


def read_external(path: str | Path, *, arch: str | None = None) -> dict[str, Any] | None:
    """A native-format mapping for a timm / Hugging Face / torchvision file or folder; None for any other file
    (the flavours read those). `arch` names the architecture of a file without config.json."""
    path = Path(path)
    folder = path.is_dir()
    weights = weights_file(path) if folder else path
    config_path = (path if folder else path.parent) / "config.json"
    config = read_config(config_path) if config_path.is_file() and (folder or weights.suffix in (".safetensors",
                                                                                                  ".bin")) else None
    if not folder and weights.suffix != ".safetensors" and config is None:
        return None                                    # a .pth / .pt: the flavours decide (then `state_dict_of`)
    state = read_weights(weights)
    if config is not None:
        return native_mapping(state, config_arch(config, config_path), config.get("model_args") or {},
                              config.get("pretrained_cfg") or {}, num_classes=config.get("num_classes"))
    if arch is None:
        raise UserError(f"{path}: no config.json beside it names the architecture; pass --arch with the one it was "
                        "saved from (timm:NAME, tv:NAME, or one of `python main.py --list-archs`)")
    return native_mapping(state, arch, {}, {}, num_classes=None)


def state_dict_of(path: str | Path, arch: str | None) -> dict[str, Any] | None:
    """A .pth / .pt / .bin state dict no flavour recognised, read as the weights of the architecture a config.json
    beside it names, else of `arch` (--arch); None when neither says."""
    path = Path(path)
    config_path = path.parent / "config.json"
    if config_path.is_file():
        config = read_config(config_path)
        return native_mapping(read_weights(path), config_arch(config, config_path), config.get("model_args") or {},
                              config.get("pretrained_cfg") or {}, num_classes=config.get("num_classes"))
    return native_mapping(read_weights(path), arch, {}, {}, num_classes=None) if arch else None


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a readable JSON config ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object with 'architecture', got {type(config).__name__}")
    return config


def config_arch(config: Mapping[str, Any], source: Path) -> str:
    """timm's `architecture` as this project's name (timm:NAME)."""
    name = config.get("architecture") or (config.get("pretrained_cfg") or {}).get("architecture")
    if not isinstance(name, str) or not name:
        raise UserError(f"{source}: no 'architecture' entry (timm's config.json names the model, e.g. "
                        "\"architecture\": \"vit_small_patch16_224\"); add it, or pass --arch")
    return name if ":" in name else f"timm:{name.split('.')[0]}"      # 'vit_small_patch16_224.augreg_in1k' too


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors without pickle, others with weights_only=True; unwrapped."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file  # optional: only these files need it
        except ImportError:
            raise UserError(f"{path}: reading .safetensors needs the safetensors package: pip install "
                            "safetensors") from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # noqa: BLE001 -- the library's errors for a damaged file vary
            raise UserError(f"{path}: not a readable safetensors file ({str(err).splitlines()[0][:160]})") from None
    raw = read_checkpoint_file(path)
    for key in STATE_KEYS:
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise UserError(f"{path}: expected a state dict (names -> tensors), plain or under one of {list(STATE_KEYS)}")
    return {k.removeprefix("module."): v for k, v in raw.items()}


def native_mapping(state: dict[str, torch.Tensor], arch: str, model_args: Mapping[str, Any],
                   pretrained: Mapping[str, Any], *, num_classes: int | None) -> dict[str, Any]:
    """The file as a native checkpoint: architecture and its arguments, weights, input settings of its config."""
    interpolation = pretrained.get("interpolation", "bicubic" if arch.startswith("timm:") else "bilinear")
    if interpolation not in INTERPOLATIONS:
        log.warning("its config's interpolation %r is not one this project resizes with; using bicubic",
                    interpolation)
        interpolation = "bicubic"
    args = {k: v for k, v in model_args.items() if k != "num_classes"}     # the head is rebuilt for the data
    mapping = {"format": NATIVE_FORMAT, "version": NATIVE_VERSION, "arch": arch, "arch_kwargs": args,
               "num_classes": num_classes or model_args.get("num_classes"), "state_dict": state,
               "interpolation": interpolation,
               "normalization": ({"mean": list(pretrained["mean"]), "std": list(pretrained["std"])}
                                 if "mean" in pretrained and "std" in pretrained else "dataset")}
    size = model_args.get("img_size") or model_args.get("image_size") or (pretrained.get("input_size") or [None])[-1]
    mapping["extra"] = {"method": "timm" if arch.startswith("timm:") else "state dict",
                        **({"input_size": int(size[-1] if isinstance(size, (list, tuple)) else size)} if size else {})}
    return mapping
