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
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from models import build_model, head_key_patterns
from models.external import library, list_external
from utils.checkpoints.detect import TRAINING_STATE_KEYS
from utils.checkpoints.files import read_checkpoint_file
from utils.checkpoints.native import NATIVE_FORMAT, NATIVE_VERSION
from utils.errors import UserError

log = logging.getLogger(__name__)

WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
STATE_KEYS = ("state_dict", "model", "state_dict_ema")     # where training scripts wrap the weights
SOURCE_FORMAT = "external"    # these files' flavour name in reports and results (timm / Hugging Face / torchvision)
INTERPOLATIONS = ("bilinear", "bicubic")
# torchvision's first parameter per architecture family (their names carry no pretrained config to read it from)
TORCHVISION_FIRST = {name: first for first, names in {
    "conv1": ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
              "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2", "googlenet", "shufflenet_v2_x0_5",
              "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"),
    "features.0.0": ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large", "efficientnet_b0",
                     "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_b5",
                     "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_s", "efficientnet_v2_m",
                     "efficientnet_v2_l", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "swin_t",
                     "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"),
    "conv_proj": ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"),
    "stem.0": ("regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf",
               "regnet_y_16gf", "regnet_y_32gf", "regnet_x_400mf", "regnet_x_800mf", "regnet_x_1_6gf",
               "regnet_x_3_2gf", "regnet_x_8gf", "regnet_x_16gf", "regnet_x_32gf"),
}.items() for name in names}


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
    return native_mapping(state, arch or detect_arch(state, source=path), {}, {}, num_classes=None)


def state_dict_of(path: str | Path, raw: Any, arch: str | None) -> dict[str, Any] | None:
    """A .pth / .pt / .bin file's content `raw` that no flavour recognised, as the weights of the architecture a
    config.json beside it names, else of `arch` (--arch), else of the one architecture with its keys; None when it
    is not a state dict at all (the flavours' word on it stands)."""
    path = Path(path)
    state = None if isinstance(raw, Mapping) and TRAINING_STATE_KEYS <= set(raw) else unwrapped_state(raw)
    if state is None:                      # (a run's training state: the flavours' message points to its model)
        return None
    config_path = path.parent / "config.json"
    if config_path.is_file():
        config = read_config(config_path)
        return native_mapping(state, config_arch(config, config_path), config.get("model_args") or {},
                              config.get("pretrained_cfg") or {}, num_classes=config.get("num_classes"))
    return native_mapping(state, arch or detect_arch(state, source=path), {}, {}, num_classes=None)


# architectures built (on the meta device: no memory) to compare keys with, at most: 0.1-1 s each. torchvision's
# families narrow to a few dozen; timm's ViT-like files (patch_embed + head) match about 290, EfficientNet-like 170.
MAX_CANDIDATES = 60


def detect_arch(state: Mapping[str, torch.Tensor], *, source: Path) -> str:
    """The one timm or torchvision architecture (default arguments) whose state-dict keys and shapes are the file's,
    classifier aside; a UserError naming the candidates when several are, or --arch when none is."""
    keys = {k for k in state if not k.endswith("num_batches_tracked")}
    candidates = arch_candidates(keys)
    hint = ("pass --arch with the architecture it was saved from (timm:NAME, tv:NAME; `python main.py --list-archs`)"
            ", or put timm's config.json beside it")
    if not candidates or len(candidates) > MAX_CANDIDATES:
        why = f"{len(candidates)} architectures have its first layer and head" if candidates else \
            "no timm / torchvision architecture has its first layer and head"
        raise UserError(f"{source}: no config.json names its architecture and {why}; {hint}")
    log.info("%s names no architecture: comparing its keys with %d timm / torchvision architectures", source,
             len(candidates))
    matches = [name for name in candidates if same_layout(name, state, keys)]
    if len(matches) == 1:
        log.info("%s: its keys and shapes are those of %s", source, matches[0])
        return matches[0]
    if not matches:
        raise UserError(f"{source}: no config.json names its architecture and no timm / torchvision architecture with "
                        f"default arguments has its keys and shapes; {hint}")
    raise UserError(f"{source}: no config.json names its architecture and {len(matches)} have its keys and shapes "
                    f"({', '.join(matches[:6])}{', ...' if len(matches) > 6 else ''}): they differ in their "
                    "pretrained settings (normalisation, resize); pass --arch with the one it was saved from")


def arch_candidates(keys: set[str]) -> list[str]:
    """Architectures whose first layer and classifier (timm's pretrained config; torchvision's by TORCHVISION_FIRST)
    are among the file's keys."""
    out = []
    try:
        timm = library("timm")
        for name in timm.list_models():
            cfg = timm.get_pretrained_cfg(name)
            heads = cfg.classifier if cfg is not None else None
            heads = heads if isinstance(heads, (tuple, list)) else [heads]
            if cfg is not None and cfg.first_conv and f"{cfg.first_conv}.weight" in keys \
                    and all(h and f"{h}.weight" in keys for h in heads):
                out.append(f"timm:{name}")
    except UserError:
        pass
    try:
        out += [n for n in list_external("tv") if n.split(":")[1] in TORCHVISION_FIRST
                and f"{TORCHVISION_FIRST[n.split(':')[1]]}.weight" in keys]
    except UserError:
        pass
    return out


def same_layout(arch: str, state: Mapping[str, torch.Tensor], keys: set[str]) -> bool:
    """Whether `arch` (default arguments, built on the meta device) has exactly these keys and shapes, its classifier
    aside (its class count is the file's own)."""
    try:
        with torch.device("meta"):
            model = build_model(arch, num_classes=1000)
    except Exception:  # noqa: BLE001 -- an architecture that does not build with defaults is not this file's
        return False
    heads = [re.compile(p) for p in head_key_patterns(model)]
    theirs = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if set(theirs) != keys:
        return False
    return all(tuple(state[k].shape) == tuple(shape) for k, shape in theirs.items()
               if not any(h.search(k) for h in heads))


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
    state = unwrapped_state(read_checkpoint_file(path))
    if state is None:
        raise UserError(f"{path}: expected a state dict (names -> tensors), plain or under one of {list(STATE_KEYS)}")
    return state


def unwrapped_state(raw: Any) -> dict[str, torch.Tensor] | None:
    """A state dict, plain or under a training script's key ('module.' prefixes of DDP dropped); None for other
    content."""
    for key in STATE_KEYS:
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        return None
    return {str(k).removeprefix("module."): v for k, v in raw.items()}


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
    mapping["source_format"] = SOURCE_FORMAT          # the flavour name it is reported under
    mapping["extra"] = {"method": "timm" if arch.startswith("timm:") else "state dict",
                        **({"input_size": int(size[-1] if isinstance(size, (list, tuple)) else size)} if size else {})}
    return mapping
