"""Cells: one transfer run of a study each -- (upstream, dataset, mode, seed) with its options resolved.

A cell's key hashes what determines its result -- the checkpoint's content, the dataset, the mode,
the seed and the resolved configuration (the text of its config files and every option) -- so renaming
files never repeats work and changing a setting never reuses a stale result. A cell is done when its
run directory holds `result.json`, failed when it holds only `error.json`.
"""
from __future__ import annotations

import hashlib
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.checkpoints import file_sha256
from utils.errors import UserError
from utils.io import atomic_write_json, read_json
from utils.runs import RUNS, RunResult
from utils.studies.study import DatasetEntry, Study, UpstreamSpec

CONFIG_FILE_OPTIONS = ("trainer_config_path", "transfer_config_path", "recipe", "probe_config_path")
# Options that say where or how fast a cell runs, or who watches it, not what it computes: left out of its key.
NOT_IN_KEY = {"workers", "progress", "resume", "gpus", "cpu", "features_cache", "experiment_root_path", "exp_name",
              "from_checkpoint_path", "use_wandb", "wandb_project", "wandb_group", "wandb_name"}


@dataclass
class Cell:
    """One transfer run: (upstream, dataset, mode, seed) with everything resolved."""

    upstream: str
    dataset: str
    mode: str
    seed: int
    options: dict[str, Any]              # the run kind's options, minus where the run lives
    key: str = ""
    root: Path = Path(".")               # the study's experiment root (results.csv lives here)
    name: str = ""                       # the run directory, relative to root

    @property
    def run_dir(self) -> Path:
        return self.root / self.name

    @property
    def label(self) -> str:
        return f"{self.mode:<6} {self.dataset:<12} {self.upstream:<16} seed {self.seed}"


def file_text_hash(path: str | None) -> str | None:
    """Hash of a config file's text (so editing a config changes the key), None when absent."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: file not found (named in the study file)")
    return hashlib.sha256(p.read_bytes()).hexdigest()


def dataset_file_hash(path: str | None) -> dict[str, str]:
    """{"dataset_file": hash of its text} for a dataset given as a file (a YOLO data.yaml: regenerated data writes a
    new one), else {} -- so keys of datasets given as folders stay what they were."""
    if not (path and Path(path).is_file()):
        return {}
    return {"dataset_file": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def cell_key(*, checkpoint_sha256: str, dataset: DatasetEntry, mode: str, seed: int, options: dict[str, Any]) -> str:
    config_files = {k: file_text_hash(v) for k, v in sorted(options.items()) if k in CONFIG_FILE_OPTIONS and v}
    payload = {"checkpoint": checkpoint_sha256, "dataset": [dataset.name, dataset.path], "mode": mode, "seed": seed,
               "options": {k: v for k, v in sorted(options.items()) if k not in NOT_IN_KEY}, "files": config_files,
               **dataset_file_hash(dataset.path)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cell_options(study: Study, *, upstream: UpstreamSpec, dataset: DatasetEntry, mode: str, seed: int,
                 checkpoint: Path) -> dict[str, Any]:
    """The run options of one cell: study, dataset and mode options, then what the cell itself fixes."""
    spec = study.mode(mode)
    training = study.train_options if mode == "full" else {}
    values = {"workers": 0, **study.options, **training, **dataset.overrides, **spec.options,
              **dataset.mode_overrides(mode),
              **spec.run_fields(), "dataset": dataset.kind, "dataset_path": dataset.path,
              "dataset_name": dataset.name if dataset.dataset else None,
              "from_checkpoint_path": str(checkpoint), "checkpoint_flavour": upstream.flavour, "seed": seed,
              "model_label": upstream.model, "sparsity_label": upstream.sparsity}
    return {k: v for k, v in values.items() if v is not None}


def expand(study: Study, upstream_paths: dict[str, Path | None]) -> tuple[list[Cell], list[str]]:
    """All cells whose upstream checkpoint exists, and the upstreams that block their cells."""
    root = Path(study.experiment_root)
    cells, blocked = [], []
    for u in study.upstreams:
        ckpt = upstream_paths.get(u.name)
        if ckpt is None:
            blocked.append(u.name)
            continue
        sha = file_sha256(ckpt)
        for dataset in study.datasets:
            for mode in study.modes:
                for seed in study.seeds_for(mode):
                    opts = cell_options(study, upstream=u, dataset=dataset, mode=mode, seed=seed, checkpoint=ckpt)
                    key = cell_key(checkpoint_sha256=sha, dataset=dataset, mode=mode, seed=seed, options=opts)
                    name = f"{mode}/{dataset.name}/{u.name}_seed{seed}_{key[:10]}"
                    cells.append(Cell(upstream=u.name, dataset=dataset.name, mode=mode, seed=seed, options=opts,
                                      key=key, root=root, name=name))
    return cells, blocked


def cell_status(cell: Cell) -> str:
    if (cell.run_dir / "result.json").exists():
        return "done"
    if (cell.run_dir / "error.json").exists():
        return "failed"
    return "todo"


def read_error(cell: Cell) -> str:
    return read_json(cell.run_dir / "error.json").get("error", "?")


def recorded_outcome(cell: Cell) -> dict[str, Any] | None:
    """A finished cell's outcome from its run folder (what `run_cell` returned, less the seconds): None when it
    has neither a result nor an error."""
    status = cell_status(cell)
    if status == "done":
        metric, value = RunResult(record=read_json(cell.run_dir / "result.json"), run_dir=cell.run_dir).score
        return {"status": "done", "val_acc": value, "metric": metric}
    if status == "failed":
        return {"status": "failed", "error": read_error(cell)}
    return None


def run_cell(cell: Cell) -> dict[str, Any]:
    """Run one cell in this process; never raises for a cell's own failure (it is written to error.json)."""
    start = time.perf_counter()
    kind = RUNS.get(cell.mode)
    try:
        opts = kind.options(**{**cell.options, **kind.cell_defaults(cell.root), "experiment_root_path": str(cell.root),
                               "exp_name": cell.name, "resume": True, "progress": False})
        result = kind.run(opts)
        (cell.run_dir / "error.json").unlink(missing_ok=True)
        metric, value = result.score
        return {"status": "done", "val_acc": value, "metric": metric, "seconds": time.perf_counter() - start}
    except Exception as err:  # noqa: BLE001 -- one cell's failure must not stop the sweep
        cell.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cell.run_dir / "error.json", {
            "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(), "cell": cell.label})
        return {"status": "failed", "error": f"{type(err).__name__}: {err}", "seconds": time.perf_counter() - start}
