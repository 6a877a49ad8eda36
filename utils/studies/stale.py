"""Done cells whose data changed after they ran.

A cell's key names its dataset by name and path (a dataset given as a data.yaml by the file's text too), not
by the images: hashing every image at each sweep would cost more than many cells. Each run records what its
splits held instead (config.yaml `dataset.content`, utils.data.fingerprint: a stat per image file, a hash of
in-memory pixels), and the sweep compares that with the data as it is now. A stale cell is reported; with
`--rerun-stale` its run directory is set aside (renamed, its result.json kept), its row leaves results.csv, and
the cell runs again.
"""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from utils.config import read_yaml
from utils.data import content_fingerprint
from utils.errors import UserError
from utils.io import drop_csv_rows, read_json
from utils.runs.dirs import same_run
from utils.studies.cells import Cell
from utils.tasks import task

log = logging.getLogger(__name__)

DataKey = tuple[str, str | None, int | None, int]


def recorded_content(cell: Cell) -> dict[str, str] | None:
    """The split fingerprints the cell's run recorded, None when it recorded none (a run of an older version)."""
    path = cell.run_dir / "config.yaml"
    if not path.is_file():
        return None
    content = ((read_yaml(path) or {}).get("dataset") or {}).get("content")
    return content if isinstance(content, dict) and all(content.values()) else None


def data_key(cell: Cell) -> DataKey:
    """What decides the samples of a cell's splits: dataset, path, training subset and its seed (which draws
    only a subset)."""
    o = cell.options
    subset = o.get("max_train_samples")
    return o["dataset"], o.get("dataset_path"), subset, int(o.get("seed", 0)) if subset else 0


def current_content(key: DataKey) -> dict[str, str | None]:
    """The split fingerprints of the data as it is now (its files listed and stat'ed, no image decoded)."""
    name, path, max_train_samples, seed = key
    splits = task(dataset=name).load_splits(name, path, max_train_samples=max_train_samples, seed=seed, verify=False)
    return {"train": content_fingerprint(splits.train), "test": content_fingerprint(splits.test)}


def stale_cells(done: list[Cell]) -> list[Cell]:
    """The done cells whose recorded data differs from the data now; data that cannot be read now is left
    alone (said once per dataset)."""
    now: dict[DataKey, dict[str, Any] | None] = {}
    stale = []
    for cell in done:
        recorded = recorded_content(cell)
        if recorded is None:
            continue
        key = data_key(cell)
        if key not in now:
            try:
                now[key] = current_content(key)
            except UserError as err:
                log.warning("cannot check the data of %s against its finished cells: %s", key[0], err)
                now[key] = None
        if now[key] is not None and any(now[key].get(split) != value for split, value in recorded.items()):
            stale.append(cell)
    return stale


def set_aside(cell: Cell) -> Path:
    """Rename a stale cell's run directory (`<name>.stale-<UTC time>`, its result.json kept) and take its row out
    of results.csv, so the cell runs again and the table holds the runs as they are; returns the new path."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = cell.run_dir.with_name(f"{cell.run_dir.name}.stale-{stamp}")
    record = read_json(cell.run_dir / "result.json")
    drop_csv_rows(cell.root / "results.csv",
                  lambda row: same_run(row, record, run_dir=cell.run_dir, experiment_root=cell.root))
    cell.run_dir.rename(target)
    return target
