"""Run kinds and what a run returns: one registry (`RUNS`), one typed result.

Everything that launches runs -- the entry points, the sweep, sparse_transfer.py, the demo -- looks the
kind up by name and calls it; nothing compares kind names:

    kind = RUNS.get("full")
    result = kind.run(kind.options(**values))      # -> RunResult
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from utils.registry import Registry
from utils.runs.options import RunOptions
from utils.tasks import task


@dataclass(frozen=True)
class InputSettings:
    """How a run prepared its images: what a deployment must feed the model."""

    image_size: int
    interpolation: str
    normalization: Any   # "dataset" (the dataset's statistics) or {"mean": [...], "std": [...]}

    def mean_std(self) -> tuple[Any, Any]:
        """(mean, std) for load_datasets: None, None for the dataset's own statistics."""
        if self.normalization == "dataset":
            return None, None
        return self.normalization["mean"], self.normalization["std"]


@dataclass(frozen=True)
class ResultRow:
    """One run's result row, built by both run kinds: the results.csv columns in their order (RESULT_COLUMNS derives
    from these fields) and `details`, what only result.json keeps (per-layer sparsity, the input settings, a probe's
    L2 grid...). The paper's raw_results schema comes first (dset, model, sparsity, seed, val_acc). `val_acc` is the
    paper's column name and holds what the paper put there: the top-1 accuracy on the dataset's TEST split after the
    last epoch (no model selection on it; empty for a detector, whose score is `map`). `model` is the upstream's
    pruning method (or the recipe's when it prunes), `sparsity` its nominal sparsity."""

    dset: str
    model: str
    sparsity: float | str
    seed: int
    val_acc: float | str
    finetuning: str
    arch: str
    checkpoint: str
    flavour: str
    recipe: str
    solver: str
    lr: float | str
    epochs: int | str
    batch_size: int | str
    measured_sparsity: float
    run_dir: str
    git_commit: str
    finished_at: str
    task: str
    map: float | str
    map50: float | str
    precision: str
    details: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """result.json's content: the columns, then the details."""
        return {**{name: getattr(self, name) for name in RESULT_COLUMNS}, **self.details}


RESULT_COLUMNS = [f.name for f in fields(ResultRow) if f.name != "details"]


@dataclass(frozen=True)
class RunResult:
    """A finished run: the record it wrote (result.json; its results.csv row is a subset) and where it lives."""

    record: dict[str, Any]
    run_dir: Path
    input: InputSettings | None = None        # None only for runs recorded before inputs were kept
    details: dict[str, Any] = field(default_factory=dict)   # this process's extras, never written

    @property
    def val_acc(self) -> float:
        return float(self.record["val_acc"])

    @property
    def score(self) -> tuple[str, float]:
        """(name, value) of the run's result: a classifier's accuracy, a detector's mAP@0.5:0.95."""
        kind = task(record=self.record)
        return kind.short, float(self.record[kind.score])

    def summary(self) -> dict[str, Any]:
        """The line a command prints at the end: what was run and its result (a detector's mAPs, a classifier's
        accuracy), the sparsity measured and where the run lives."""
        keys = ("dset", "model", "sparsity", "seed", *task(record=self.record).summary_fields.values())
        return {k: self.record[k] for k in (*keys, "measured_sparsity", "run_dir") if k in self.record}

    @property
    def measured_sparsity(self) -> float:
        return float(self.record["measured_sparsity"])

    @classmethod
    def from_record(cls, record: dict[str, Any], run_dir: Path) -> "RunResult":
        """The result of a run recorded earlier (its result.json)."""
        given = record.get("input")
        return cls(record=record, run_dir=run_dir, input=InputSettings(**given) if given else None)


@dataclass(frozen=True)
class RunKind:
    """A kind of run: its options model, the function that runs it, and what a sweep cell adds to its options."""

    name: str
    options: type[RunOptions]
    run: Callable[[Any], RunResult]
    cell_defaults: Callable[[Path], dict[str, Any]] = lambda root: {}   # shared caches under a study's root


RUNS: Registry[RunKind] = Registry("run kind")
