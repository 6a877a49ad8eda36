"""Atomic file writes and locked appends: nothing half-written survives a crash."""
from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from utils.errors import UserError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path) then rename tmp over `path` (same directory, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        honour_umask(tmp)       # mkstemp makes 0600 files: colleagues on a shared cluster could not read them
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def honour_umask(path: str | Path, *, directory: bool = False) -> None:
    """Give a file (or directory) made by tempfile the permissions a plain open() (or mkdir) would have."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if directory else 0o666) & ~mask)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """torch.save, atomically, and byte-identical for identical content: torch names the records inside the
    file after the file, so the temporary file carries the final name (in a temporary directory)."""
    import torch  # lazily: the analysis tools use this module without needing torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        torch.save(obj, tmp_dir / path.name)
        os.replace(tmp_dir / path.name, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def append_csv_row(path: str | Path, row: dict[str, Any], *, optional: Iterable[str] = ()) -> None:
    """Append one row under an exclusive lock; the header is written by whoever creates the file.

    New columns in a later row are an error rather than a silently misaligned file, except `optional` ones
    (columns added to the schema later): an older table takes the row without them; callers check up front
    that a row whose optional values matter has a table with those columns.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked_table(path) as f:
        f.seek(0)
        header = next(csv.reader(f), None)
        buf = io.StringIO()
        if header is None:
            header = list(row)
            csv.writer(buf).writerow(header)
        row = {k: v for k, v in row.items() if k in header or k not in optional}
        extra = set(row) - set(header)
        if extra:
            raise ValueError(f"{path}: row has columns {sorted(extra)} absent from its header")
        csv.DictWriter(buf, fieldnames=header).writerow(row)
        f.seek(0, os.SEEK_END)
        if f.tell() and not _ends_with_newline(f):
            f.write("\n")                          # never fuse a row onto an unterminated last line
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _locked_table(path: Path) -> Iterator[Any]:
    """The table opened for appending, exclusively locked, and still the file at `path` (a writer that replaced it
    while this one waited for the lock -- `drop_csv_rows` -- makes this one open the new file)."""
    while True:
        with open(path, "a+", newline="") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                if os.path.exists(path) and os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                    yield f
                    return
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def drop_csv_rows(path: str | Path, drop: Callable[[dict[str, str]], bool]) -> int:
    """Remove the rows for which `drop` is true, atomically (a complete new file renamed over the old one) and
    under the appenders' lock; returns how many went."""
    return edit_csv_rows(path, lambda row: None if drop(row) else row)


def edit_csv_rows(path: str | Path, edit: Callable[[dict[str, str]], dict[str, str] | None]) -> int:
    """Replace each row by `edit(row)` (None: remove it), atomically and under the appenders' lock; returns how many
    rows changed or went."""
    path = Path(path)
    if not path.is_file():
        return 0
    with _locked_table(path) as f:
        f.seek(0)
        rows = list(csv.reader(f))
        if not rows:
            return 0
        header, body = rows[0], rows[1:]
        edited = [edit(dict(zip(header, r))) for r in body]
        kept = [[e.get(h, "") for h in header] for e in edited if e is not None]
        changed = sum(1 for r, e in zip(body, edited) if e is None or [e.get(h, "") for h in header] != r)
        if changed:
            buf = io.StringIO()
            csv.writer(buf).writerows([header, *kept])
            atomic_write_text(path, buf.getvalue())
        return changed


def set_aside_ragged_rows(path: str | Path, aside: str | Path) -> list[tuple[int, int, int]]:
    """Move the rows whose field count differs from the header's (a row cut off by a killed writer) from the table
    to the end of `aside`, atomically and under the appenders' lock; returns (line, fields, header fields) of each."""
    path = Path(path)
    if not path.is_file():
        return []
    with _locked_table(path) as f:
        f.seek(0)
        rows = list(csv.reader(f))
        if not rows:
            return []
        header = rows[0]
        ragged = [(i + 2, r) for i, r in enumerate(rows[1:]) if r and len(r) != len(header)]
        if ragged:
            with open(aside, "a", newline="") as out:
                csv.writer(out).writerows(r for _, r in ragged)
                out.flush()
                os.fsync(out.fileno())
            buf = io.StringIO()
            cut = {line for line, _ in ragged}
            csv.writer(buf).writerows([header, *(r for i, r in enumerate(rows[1:]) if i + 2 not in cut)])
            atomic_write_text(path, buf.getvalue())
        return [(line, len(r), len(header)) for line, r in ragged]


def _ends_with_newline(f) -> bool:
    f.seek(f.tell() - 1)
    last = f.read(1)
    f.seek(0, os.SEEK_END)
    return last == "\n"


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def exclusive_lock(path: str | Path, *, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) for the block; another holder is an error naming it.

    The lock is the kernel's (flock): a killed holder's lock goes away with it, so a stale file never blocks.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(f"{what} is in use by {holder} (lock {path}); wait for it to finish, or stop it") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"process {os.getpid()} on {socket.gethostname()}")
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
