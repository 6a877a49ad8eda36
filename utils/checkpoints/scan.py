"""What a checkpoint's pickles would call, found without running any of it; and a copy of its data that needs none.

Zip-format files (torch >= 1.6) are scanned by torch; legacy files (`_use_new_zipfile_serialization=False`, as
old YOLOv5 and SparseML files are) and plain pickles are read by an unpickler whose every global is an inert
recorder, so the names are known and nothing named is imported or called.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

_MAX_PICKLES = 5      # a legacy file: magic number, protocol, system info, the object, storage keys (then raw bytes)


class _Inert:
    """Whatever a pickle names becomes this: it accepts any construction, state, item or call, and does nothing."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Inert":
        return _Inert()

    def __getattr__(self, name: str) -> Any:      # append, extend, ... asked of a stand-in list or dict
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert()


class _Recorder(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, names: list[str]):
        super().__init__(file)
        self.names = names

    def find_class(self, module: str, name: str) -> type:
        self.names.append(f"{module}.{name}")
        return _Inert

    def persistent_load(self, pid: Any) -> None:   # tensors' storages: the data is not needed for the names
        return None


def _legacy_globals(path: Path) -> list[str]:
    names: list[str] = []
    with open(path, "rb") as f:
        for _ in range(_MAX_PICKLES):
            try:
                _Recorder(f, names).load()
            except Exception:  # noqa: BLE001 -- the raw storage bytes after the pickles, or a damaged file: done
                break
    return names


def _named_globals(path: Path) -> list[str]:
    """The globals the file's pickles name (module.qualname, once each; for zip files torch leaves out those its
    weights-only loader allows), without loading any of them."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))   # torch's own scan
    return list(dict.fromkeys(_legacy_globals(path)))


def untrusted_globals(path: str | Path, trusted: list[str] = ()) -> list[str]:
    """The globals the file's pickles name that neither torch's weights-only loader nor `trusted` allows."""
    from torch._weights_only_unpickler import _get_allowed_globals  # the loader's own allow-list
    allowed = set(_get_allowed_globals()) | set(trusted)
    return [n for n in _named_globals(Path(path)) if n not in allowed]
