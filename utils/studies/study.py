"""Study files (`configs/studies/*.yaml`): upstreams x datasets x modes x seeds.

Keys that end up as run options use the options' own names (`dataset`, `seed`, `trainer_config_path`,
... see utils.runs.options); `options:` mappings are passed to every run they apply to.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from utils.config import StrictModel, load_config

MODES = ("full", "linear")   # the run kinds a study can use (utils.runs.RUNS), one section each


class ProduceSpec(StrictModel):
    """How the study makes an upstream checkpoint itself: train from scratch, run a recipe, or prune once."""

    dataset: str | None = None
    dataset_path: str | None = None
    arch: str | None = None                    # train this architecture from scratch
    from_upstream: str | None = None           # start from another upstream of this study (by name)
    trainer_config_path: str | None = None     # trainer config (with a recipe it only names the optimizer)
    recipe: str | None = None
    recipe_args: dict[str, Any] = Field(default_factory=dict)
    oneshot_sparsity: float | None = Field(default=None, ge=0, lt=1)   # one-shot global magnitude pruning
    options: dict[str, Any] = Field(default_factory=dict)              # more main.py options

    @model_validator(mode="after")
    def _one_way(self) -> "ProduceSpec":
        if self.oneshot_sparsity is not None:
            if not self.from_upstream:
                raise ValueError("oneshot_sparsity needs from_upstream (the checkpoint to prune)")
        elif not (self.dataset and self.trainer_config_path and (self.arch or self.from_upstream)):
            raise ValueError("training an upstream needs dataset, trainer_config_path and arch or from_upstream")
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
    """A dataset of the study. `name` is a registry dataset (digits, cifar10, imagefolder, yolo, ...) or, with
    `dataset:` naming that, the user's own name for it (two ImageFolder trees: `name: flowers, dataset: imagefolder`),
    which then names its cells and results.csv's rows."""

    name: str
    dataset: str | None = None
    path: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)   # per-dataset options, e.g. {lr: 0.01}
    full_overrides: dict[str, Any] = Field(default_factory=dict)
    linear_overrides: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _own_name(self) -> "DatasetEntry":
        if self.dataset and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", self.name):
            raise ValueError(f"dataset name {self.name!r} names run folders and result rows: letters, digits and "
                             ". _ + - only, starting with a letter or digit")
        return self

    @property
    def kind(self) -> str:
        """The dataset to load (the registry's name): `dataset` when given, else `name`."""
        return self.dataset or self.name

    def mode_overrides(self, mode: str) -> dict[str, Any]:
        """This dataset's options for the cells of one mode (on top of `overrides`)."""
        return {"full": self.full_overrides, "linear": self.linear_overrides}[mode]


class ModeSpec(StrictModel):
    """A mode section: its seeds (default: the study's) and options for every cell of the mode."""

    seeds: list[int] | None = Field(default=None, min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)

    def run_fields(self) -> dict[str, Any]:
        """The section's own fields, as run options."""
        return self.model_dump(exclude={"seeds", "options"})


class FullMode(ModeSpec):
    trainer_config_path: str
    transfer_config_path: str | None = None
    recipe: str | None = None
    recipe_args: dict[str, Any] | None = None

    def run_fields(self) -> dict[str, Any]:
        values = super().run_fields()
        values["recipe_args"] = json.dumps(self.recipe_args) if self.recipe_args else None
        return values


class LinearMode(ModeSpec):
    solver: Literal["lbfgs", "sklearn", "sgd"] = "lbfgs"
    trainer_config_path: str | None = None        # the sgd solver's protocol


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
    train_options: dict[str, Any] = Field(default_factory=dict)   # ... and by every training run (the upstreams a
    slurm: SlurmSpec = SlurmSpec()                                # study trains and its full cells): precision, ...

    @model_validator(mode="after")
    def _consistent(self) -> "Study":
        if not (self.full or self.linear):
            raise ValueError("enable at least one mode: 'full' and/or 'linear'")
        names = [u.name for u in self.upstreams]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"upstream names must be unique; repeated: {dup}")
        datasets = [d.name for d in self.datasets]
        dup = sorted({n for n in datasets if datasets.count(n) > 1})
        if dup:                # one column in the report, one group in the analysis: give each its own name
            raise ValueError(f"dataset names must be unique; repeated: {dup} (two datasets of one kind: name each, "
                             f"e.g. {{name: flowers, dataset: {dup[0]}, path: ...}})")
        for u in self.upstreams:
            src = u.produce.from_upstream if u.produce else None
            if src is not None and src not in names:
                raise ValueError(f"upstream {u.name!r}: from_upstream {src!r} is not an upstream of this study")
        return self

    @property
    def modes(self) -> list[str]:
        return [m for m in MODES if self.mode(m) is not None]

    def mode(self, name: str) -> FullMode | LinearMode | None:
        """The section of mode `name` (None when the study does not use it)."""
        return {"full": self.full, "linear": self.linear}[name]

    def seeds_for(self, mode: str) -> list[int]:
        return self.mode(mode).seeds or self.seeds


def load_study(path: str | Path) -> Study:
    return load_config(path, Study)
