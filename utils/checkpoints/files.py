"""Reading checkpoint files, which are untrusted: `weights_only=True`, with a flavour's allow-listed globals only."""
from __future__ import annotations

import hashlib
import importlib
import re
from pathlib import Path
from typing import Any

import torch

from utils.checkpoints.flavours import DENIED_MODULES, DENIED_NAMES
from utils.checkpoints.scan import untrusted_globals
from utils.errors import UserError
from utils.io import atomic_torch_save

_SHOW = 5  # offending names listed in an error message

# numpy arrays and scalars are data (an unstripped YOLOv5 last.pt keeps best_fitness as one): the names pickle uses
# to rebuild them, allowed for every file. An array's elements still pass the same restricted unpickler.
NUMPY_DATA_GLOBALS = [f"{core}.multiarray.{name}" for core in ("numpy.core", "numpy._core")
                      for name in ("_reconstruct", "scalar")] + \
    ["numpy.ndarray", "numpy.dtype"] + [f"numpy.dtypes.{kind}DType" for kind in (
        "Float64", "Float32", "Float16", "Int64", "Int32", "Int16", "Int8", "UInt64", "UInt32", "UInt16", "UInt8",
        "Bool")]


def file_sha256(path: str | Path, *, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content, read in chunks; of a model folder (timm / Hugging Face), of its files'
    names and contents in name order."""
    digest = hashlib.sha256()
    path = Path(path)
    for file in sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]:
        if path.is_dir():
            digest.update(f"{file.name}\n".encode())
        with open(file, "rb") as f:
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
    trusted_globals = [*NUMPY_DATA_GLOBALS, *trusted_globals]
    allowed = [_resolve_global(g) for g in trusted_globals] + [_module_stand_in(g) for g in module_globals]
    trusted_globals = [*trusted_globals, *module_globals]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for bad files; each becomes one clear line
        try:
            unsafe = untrusted_globals(path, trusted_globals)
        except Exception:  # noqa: BLE001 -- an unreadable file: the names torch reported are all there is
            unsafe = []
        # Names torch reports while unpickling (types only met when building objects).
        unsafe += re.findall(r"Unsupported global: GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(err))
        unsafe = list(dict.fromkeys(n for g in unsafe for n in ((g,) if isinstance(g, str) else g)
                                    if n and n not in trusted_globals))
        if unsafe:
            raise UserError(refusal(path, unsafe, flavour_name)) from None
        first = (str(err).strip().splitlines() or [""])[0][:200]
        if "Weights only load failed" in first:     # torch's advice (weights_only=False) would run the file's code
            first = "it is not a torch.save file of tensors"
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def dangerous_globals(names: list[str]) -> list[str]:
    """Those of `names` that run code when called (os.system, builtins.eval, ...): a file naming one is not data."""
    return [g for g in names if g.split(".")[0] in DENIED_MODULES or g in DENIED_NAMES]


def refusal(path: Path, unsafe: list[str], flavour_name: str | None) -> str:
    """Why a file whose unpickling needs `unsafe` globals is refused, and what a user can do. Never torch's advice
    (weights_only=False): that imports and calls whatever the file names."""
    dangerous = dangerous_globals(unsafe)
    if dangerous:
        return (f"{path}: refused: loading it would call {', '.join(dangerous[:_SHOW])}, which runs code on this "
                "machine; this is not model data (do not use this file)")
    where = f"configs/checkpoints/{flavour_name}.yaml" if flavour_name else "a flavour YAML"
    return (f"{path}: refusing to unpickle {', '.join(unsafe[:_SHOW])}: the file names code to load and code in a "
            f"checkpoint is never run here; it names no function known to run commands, so "
            f"`python -m utils.checkpoints {path} --convert CLEAN.pt` can copy its tensors with inert stand-ins for "
            f"these names (nothing of them is imported or run), or if you trust them add them to trusted_globals in "
            f"{where} (or a copy passed with --checkpoint_flavour)")


def convert_checkpoint(src: str | Path, dst: str | Path) -> list[str]:
    """Copy a file's tensors, numbers, strings and containers into a plain `torch.save` file that loads with
    weights_only=True alone; every global it names is read as an inert stand-in (an nn.Module's parameters and
    buffers are kept as its state dict). Refuses files that name code-running functions. Returns the names."""
    src = Path(src)
    if not src.is_file():
        raise UserError(f"{src}: checkpoint file not found")
    try:
        names = untrusted_globals(src)
    except Exception as err:  # noqa: BLE001 -- not a pickle at all
        raise UserError(f"{src}: not a readable PyTorch checkpoint ({type(err).__name__})") from None
    if dangerous_globals(names):
        raise UserError(refusal(src, names, None))
    stand_ins = [(type(n.rpartition(".")[2], (_StandIn, PickledModule), {"__module__": n.rpartition(".")[0],
                                                                          "__qualname__": n.rpartition(".")[2]}), n)
                 for n in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            raw = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        first = str(err).strip().splitlines()[0][:200]
        raise UserError(f"{src}: not a readable PyTorch checkpoint ({first})") from None
    atomic_torch_save(dst, plain_copy(raw))
    return names


_PLAIN = (torch.Tensor, str, bytes, int, float, bool, type(None))


def plain_copy(obj: Any) -> Any:
    """`obj` with stand-ins replaced: a pickled module by its state dict, anything else dropped (None)."""
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, dict):
        return {k: plain_copy(v) for k, v in obj.items() if isinstance(k, (str, int))}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_copy(v) for v in obj)
    if isinstance(obj, PickledModule) and isinstance(obj.__dict__.get("_parameters"), dict):
        return pickled_module_state(obj)
    return None
