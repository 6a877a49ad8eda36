"""Atomic file writes and locked appends: nothing half-written survives a crash."""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable



def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path) then rename tmp over `path` (same directory, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    import torch  # lazily: the analysis tools use this module without needing torch

    atomic_write(path, lambda p: torch.save(obj, p))


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def append_csv_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row under an exclusive lock; the header is written by whoever creates the file.

    New columns in a later row are an error rather than a silently misaligned file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            header = next(csv.reader(f), None)
            buf = io.StringIO()
            if header is None:
                header = list(row)
                csv.writer(buf).writerow(header)
            extra = set(row) - set(header)
            if extra:
                raise ValueError(f"{path}: row has columns {sorted(extra)} absent from its header")
            csv.DictWriter(buf, fieldnames=header).writerow(row)
            f.seek(0, os.SEEK_END)
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
