"""Reading checkpoint files, which are untrusted: `weights_only=True`, with a flavour's allow-listed globals only."""
from __future__ import annotations

import hashlib
import importlib
import re
from pathlib import Path
from typing import Any

import torch

from utils.checkpoints.flavours import DENIED_MODULES, DENIED_NAMES
from utils.errors import UserError

_SHOW = 5  # offending names listed in an error message


def file_sha256(path: str | Path, *, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


class _StandIn:
    """Takes the place of an allow-listed class that cannot be imported here (e.g. a training repo's
    LR-scheduler class stored by reference); it only records what the pickle gives it."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


class PickledModule:
    """An inert stand-in for a pickled nn.Module class (flavour `module_globals`): the unpickler creates it with
    `__new__` and hands it the module's attributes; nothing of the original class exists or runs here."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


def _module_stand_in(name: str) -> tuple[type, str]:
    module_name, _, attr = name.rpartition(".")
    return type(attr, (PickledModule,), {"__module__": module_name, "__qualname__": attr}), name


def pickled_module_state(module: PickledModule, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict a pickled module would give: its parameters, persistent buffers and children's, by name."""
    attrs = module.__dict__
    skip = set(attrs.get("_non_persistent_buffers_set") or ())
    out = {prefix + k: v.detach() for k, v in (attrs.get("_parameters") or {}).items() if isinstance(v, torch.Tensor)}
    out.update({prefix + k: v for k, v in (attrs.get("_buffers") or {}).items()
                if isinstance(v, torch.Tensor) and k not in skip})
    for name, child in (attrs.get("_modules") or {}).items():
        if isinstance(child, PickledModule):
            out.update(pickled_module_state(child, f"{prefix}{name}."))
    return out


def _resolve_global(name: str) -> tuple[Any, str]:
    module_name, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr), name
    except (ImportError, AttributeError):
        return type(attr, (_StandIn,), {"__module__": module_name}), name


def read_checkpoint_file(path: str | Path, *, trusted_globals: list[str] = (), module_globals: list[str] = (),
                         flavour_name: str | None = None) -> Any:
    """torch.load(weights_only=True) with the allow-listed globals (module classes as inert stand-ins); clear
    errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    allowed = [_resolve_global(g) for g in trusted_globals] + [_module_stand_in(g) for g in module_globals]
    trusted_globals = [*trusted_globals, *module_globals]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for bad files; each becomes one clear line
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # legacy (non-zip) files cannot be scanned
            unsafe = []
        # Names torch reports while unpickling (legacy files; types only met when building objects).
        unsafe += re.findall(r"Unsupported global: GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(err))
        unsafe = list(dict.fromkeys(n for g in unsafe for n in ((g,) if isinstance(g, str) else g)
                                    if n and n not in trusted_globals))
        if unsafe:
            raise UserError(refusal(path, unsafe, flavour_name)) from None
        first = (str(err).strip().splitlines() or [""])[0][:200]
        if "Weights only load failed" in first:     # torch's advice (weights_only=False) would run the file's code
            first = "it is not a torch.save file of tensors"
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def refusal(path: Path, unsafe: list[str], flavour_name: str | None) -> str:
    """Why a file whose unpickling needs `unsafe` globals is refused, and what a user who trusts it can do."""
    dangerous = [g for g in unsafe if g.split(".")[0] in DENIED_MODULES or g in DENIED_NAMES]
    if dangerous:
        return (f"{path}: refused: loading it would call {', '.join(dangerous[:_SHOW])}, which runs code on this "
                "machine; this is not model data (do not use this file)")
    where = f"configs/checkpoints/{flavour_name}.yaml" if flavour_name else "a flavour YAML"
    return (f"{path}: refusing to unpickle {', '.join(unsafe[:_SHOW])}: the file needs code to load, and loading "
            f"code from a checkpoint is unsafe; if you trust it, add these names to trusted_globals in {where} (or a "
            "copy passed with --checkpoint_flavour), or convert it once in Python: "
            "torch.save(torch.load(PATH, weights_only=False)['state_dict'], 'clean.pt')")
