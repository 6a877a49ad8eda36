"""Image files checked before training, so a bad one fails the run at once, not an epoch in.

Each file is checked cheaply -- it exists, is not empty, its header decodes to at least `MIN_SIDE` pixels a
side, a JPEG ends with its end-of-image marker, a PNG's chunks verify -- on many threads. Files that pass
are remembered by (size, modification time) in a cache file per dataset folder, so a second run checks only
what changed. All bad files are reported in one line.
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
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size == 0:
        return "empty file"
    try:
        with Image.open(path) as image:
            width, height = image.size
            kind = image.format
            if kind == "PNG":
                image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"not a readable image ({type(err).__name__})"
    if min(width, height) < MIN_SIDE:
        return f"{width}x{height} px, below {MIN_SIDE} px"
    if kind == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, size - 1024))
            if b"\xff\xd9" not in f.read():
                return "truncated JPEG"
    return None


def fingerprint(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def verify_images(paths: list[Path], *, root: Path | None) -> None:
    """Raise one UserError naming the bad files among `paths` (a cache under `root`'s name skips known-good ones)."""
    cache = cache_file(root) if root is not None else None
    known: dict[str, list[int]] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except (ValueError, OSError):
            known = {}
    todo = [p for p in paths if (now := fingerprint(p)) is None or known.get(str(p)) != now]  # missing: never known
    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        found = list(pool.map(problem, todo))
    bad = [(p, why) for p, why in zip(todo, found) if why is not None]
    if cache is not None and todo:
        known.update({str(p): fingerprint(p) for p, why in zip(todo, found) if why is None})
        atomic_write_text(cache, json.dumps(known))
    if bad:
        listed = "; ".join(f"{p} ({why})" for p, why in bad[:_SHOW])
        more = f"; and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
        raise UserError(f"{len(bad)} of {len(paths)} image files cannot be used: {listed}{more}; fix or remove them")
    log.debug("checked %d image files (%d from the cache)", len(paths), len(paths) - len(todo))
