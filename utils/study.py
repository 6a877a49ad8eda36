"""Study files (`configs/studies/*.yaml`): upstreams x datasets x modes x seeds, expanded into cells.

A cell's key hashes what determines its result -- the checkpoint's content, the dataset, the mode,
the seed and the resolved configuration (the text of its trainer config / recipe and every option) --
so renaming files never repeats work and changing a setting never reuses a stale result.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from utils.config import StrictModel, load_config
from utils.errors import UserError

MODES = ("full", "linear")


class ProduceSpec(StrictModel):
    """How the study makes an upstream checkpoint itself: train from scratch, run a recipe, or prune once."""

    dset: str | None = None
    dset_path: str | None = None
    arch: str | None = None                    # train this architecture from scratch
    from_upstream: str | None = None           # start from another upstream of this study (by name)
    config_path: str | None = None             # trainer config (with a recipe it only names the optimizer)
    recipe: str | None = None
    recipe_args: dict[str, Any] = Field(default_factory=dict)
    oneshot_sparsity: float | None = Field(default=None, ge=0, lt=1)   # one-shot global magnitude pruning
    options: dict[str, Any] = Field(default_factory=dict)              # more main.py options

    @model_validator(mode="after")
    def _one_way(self) -> "ProduceSpec":
        if self.oneshot_sparsity is not None:
            if not self.from_upstream:
                raise ValueError("oneshot_sparsity needs from_upstream (the checkpoint to prune)")
        elif not (self.dset and self.config_path and (self.arch or self.from_upstream)):
            raise ValueError("training an upstream needs dset, config_path and arch or from_upstream")
        return self


class UpstreamSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")     # used in directory names
    model: str                                           # the results' 'model' (method) label
    sparsity: float = Field(ge=0, le=1)                  # the results' nominal sparsity label
    path: str | None = None
    flavour: str | None = None
    produce: ProduceSpec | None = None

    @model_validator(mode="after")
    def _source(self) -> "UpstreamSpec":
        if (self.path is None) == (self.produce is None):
            raise ValueError("give exactly one of 'path' (an existing checkpoint) or 'produce'")
        return self


class DatasetEntry(StrictModel):
    name: str
    path: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)   # per-dataset options, e.g. {lr: 0.01}
    full_overrides: dict[str, Any] = Field(default_factory=dict)
    linear_overrides: dict[str, Any] = Field(default_factory=dict)


class FullMode(StrictModel):
    config_path: str
    seeds: list[int] | None = Field(default=None, min_length=1)   # default: the study's seeds
    transfer_config_path: str | None = None
    recipe: str | None = None
    recipe_args: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)


class LinearMode(StrictModel):
    solver: Literal["lbfgs", "sklearn", "sgd"] = "lbfgs"
    seeds: list[int] | None = Field(default=None, min_length=1)   # default: the study's seeds
    training_config_path: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class SlurmSpec(StrictModel):
    partition: str | None = None
    timeout_min: int = Field(default=720, gt=0)
    gpus_per_job: int = Field(default=1, ge=0)
    cpus_per_job: int = Field(default=8, gt=0)
    mem_gb: int | None = Field(default=None, gt=0)
    array_parallelism: int = Field(default=32, gt=0)
    log_folder: str | None = None                          # default: <experiment_root>/slurm_logs
    additional_parameters: dict[str, Any] = Field(default_factory=dict)


class Study(StrictModel):
    name: str
    experiment_root: str
    seeds: list[int] = Field(min_length=1)
    upstreams: list[UpstreamSpec] = Field(min_length=1)
    datasets: list[DatasetEntry] = Field(min_length=1)
    full: FullMode | None = None
    linear: LinearMode | None = None
    options: dict[str, Any] = Field(default_factory=dict)    # options shared by every cell
    slurm: SlurmSpec = SlurmSpec()

    @model_validator(mode="after")
    def _consistent(self) -> "Study":
        if not (self.full or self.linear):
            raise ValueError("enable at least one mode: 'full' and/or 'linear'")
        names = [u.name for u in self.upstreams]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"upstream names must be unique; repeated: {dup}")
        for u in self.upstreams:
            src = u.produce.from_upstream if u.produce else None
            if src is not None and src not in names:
                raise ValueError(f"upstream {u.name!r}: from_upstream {src!r} is not an upstream of this study")
        return self

    @property
    def modes(self) -> list[str]:
        return [m for m in MODES if getattr(self, m) is not None]


def load_study(path: str | Path) -> Study:
    return load_config(path, Study)


@dataclass
class Cell:
    """One transfer run: (upstream, dataset, mode, seed) with everything resolved."""

    upstream: str
    dataset: str
    mode: str
    seed: int
    options: dict[str, Any]              # RunOptions (full) or LinearOptions (linear), minus run location
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


def cell_key(*, checkpoint_sha256: str, dataset: DatasetEntry, mode: str, seed: int, options: dict[str, Any]) -> str:
    config_files = {k: file_text_hash(v) for k, v in sorted(options.items())
                    if k in ("config_path", "transfer_config_path", "recipe", "training_config_path",
                             "probe_config_path") and v}
    ignored = {"workers", "progress", "resume", "gpus", "cpu", "features_cache", "experiment_root_path",
               "exp_name", "from_checkpoint_path"}
    payload = {"checkpoint": checkpoint_sha256, "dataset": [dataset.name, dataset.path], "mode": mode, "seed": seed,
               "options": {k: v for k, v in sorted(options.items()) if k not in ignored}, "files": config_files}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
