"""Image files checked before training, so a bad one fails the run at once, not an epoch in.

Each file is checked cheaply -- it exists, is not empty, its header decodes to at least `MIN_SIDE` pixels a
side, a JPEG ends with its end-of-image marker, a PNG's chunks verify -- on many threads. Files that pass
are remembered by (size, modification time), with their width and height, in a cache file per dataset folder,
so a second run checks only what changed and AutoAnchor reads image sizes without opening the files. All bad
files are reported in one line.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from utils.errors import UserError
from utils.io import atomic_write_text

log = logging.getLogger(__name__)

MIN_SIDE = 8            # pixels: anything smaller is not an image a vision model can use
_SHOW = 3


def cache_file(root: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparse-transfer" / "verified-images"
    return base / f"{hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]}.json"


def problem(path: Path) -> str | None:
    """What is wrong with one image file, or None."""
    return inspect(path)[0]


def inspect(path: Path) -> tuple[str | None, list[int] | None]:
    """(what is wrong with one image file or None, its [width, height] when it decodes)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing", None
    if size == 0:
        return "empty file", None
    try:
        with Image.open(path) as image:
            width, height = image.size
            kind = image.format
            if kind == "PNG":
                image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"not a readable image ({type(err).__name__})", None
    if min(width, height) < MIN_SIDE:
        return f"{width}x{height} px, below {MIN_SIDE} px", [width, height]
    if kind == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, size - 1024))
            if b"\xff\xd9" not in f.read():
                return "truncated JPEG", [width, height]
    return None, [width, height]


def fingerprint(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _read_cache(cache: Path | None) -> dict[str, list[int]]:
    if cache is None or not cache.is_file():
        return {}
    try:
        return json.loads(cache.read_text())
    except (ValueError, OSError):
        return {}


def _unchanged(entry: list[int] | None, now: list[int] | None) -> bool:
    """A cache entry ([size, mtime] then, since sizes are kept, [width, height]) still describes the file."""
    return now is not None and entry is not None and entry[:2] == now


def _entry(path: Path, wh: list[int]) -> list[int] | None:
    """The cache entry of a good file: [size, mtime, width, height] (None if it has gone meanwhile)."""
    now = fingerprint(path)
    return None if now is None else [*now, *wh]


def _inspect_all(paths: list[Path]) -> list[tuple[str | None, list[int] | None]]:
    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        return list(pool.map(inspect, paths))


def verify_images(paths: list[Path], *, root: Path | None) -> None:
    """Raise one UserError naming the bad files among `paths` (a cache under `root`'s name skips known-good ones)."""
    cache = cache_file(root) if root is not None else None
    known = _read_cache(cache)
    todo = [p for p in paths if not _unchanged(known.get(str(p)), fingerprint(p))]   # missing: never unchanged
    found = _inspect_all(todo)
    bad = [(p, why) for p, (why, _) in zip(todo, found) if why is not None]
    if cache is not None and todo:
        known.update({str(p): entry for p, (why, wh) in zip(todo, found)
                      if why is None and (entry := _entry(p, wh)) is not None})
        atomic_write_text(cache, json.dumps(known))
    if bad:
        listed = "; ".join(f"{p} ({why})" for p, why in bad[:_SHOW])
        more = f"; and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
        raise UserError(f"{len(bad)} of {len(paths)} image files cannot be used: {listed}{more}; fix or remove them")
    log.debug("checked %d image files (%d from the cache)", len(paths), len(paths) - len(todo))


def image_sizes(paths: list[Path], *, root: Path | None) -> list[tuple[int, int]]:
    """(width, height) of each image: from the cache `verify_images` keeps under `root`'s name where the file is
    unchanged, else from its header (then remembered)."""
    cache = cache_file(root) if root is not None else None
    known = _read_cache(cache)
    entries = [known.get(str(p)) for p in paths]
    todo = [i for i, (p, e) in enumerate(zip(paths, entries))
            if not (_unchanged(e, fingerprint(p)) and len(e) == 4)]
    found = _inspect_all([paths[i] for i in todo])
    for i, (why, wh) in zip(todo, found):
        if wh is None:
            raise UserError(f"{paths[i]}: {why}; fix or remove it")
        entry = _entry(paths[i], wh)
        entries[i] = entry or [0, 0, *wh]
        if why is None and entry is not None:
            known[str(paths[i])] = entry
    if cache is not None and todo:
        atomic_write_text(cache, json.dumps(known))
    return [(e[2], e[3]) for e in entries]
