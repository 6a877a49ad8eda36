"""The one skeleton every run kind follows (full fine-tuning, linear probing, evaluation of a fine-tuned model):

    with the run directory locked:  plan -> finished? (its result, settings checked) -> seed -> upstream -> data
                                    -> fit -> record

A kind is a `RunSteps` subclass bound to one run's options; `run_steps(steps)` is the only place that orders them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from utils.data import DatasetSplits
from utils.runs.dirs import already_finished, run_lock
from utils.runs.kinds import InputSettings, RunResult
from utils.runs.options import RunOptions
from utils.runs.setup import Upstream
from utils.seed import seed_everything


class RunSteps(ABC):
    """One run kind's steps for one run. `run_dir` and `experiment_root` are known before the lock is taken."""

    def __init__(self, opts: RunOptions, run_dir: Path):
        self.opts, self.run_dir, self.experiment_root = opts, run_dir, Path(opts.experiment_root_path)

    @abstractmethod
    def plan(self) -> str:
        """Configs read, device chosen, the run directory prepared: 'new', 'resume' or 'finished'."""

    @abstractmethod
    def recorded_settings(self) -> dict[str, Any]:
        """What a finished run must have been run with to be reported as this run's result."""

    @abstractmethod
    def upstream(self) -> Upstream:
        """The pretrained model the run starts from."""

    @abstractmethod
    def data(self, upstream: Upstream) -> tuple[DatasetSplits, InputSettings]:
        """The downstream splits, prepared as the upstream expects, and those input settings."""

    @abstractmethod
    def fit(self, upstream: Upstream, data: DatasetSplits, inputs: InputSettings) -> Any:
        """Train (or score); what `record` needs."""

    @abstractmethod
    def record(self, upstream: Upstream, data: DatasetSplits, inputs: InputSettings, fitted: Any) -> RunResult:
        """Write what the run produced (model, result.json, its results.csv row) and return the result."""


def run_steps(steps: RunSteps) -> RunResult:
    """One run of any kind, its steps in the one order."""
    with run_lock(steps.run_dir):
        if steps.plan() == "finished":
            return already_finished(steps.run_dir, steps.experiment_root, steps.recorded_settings())
        seed_everything(steps.opts.seed)
        upstream = steps.upstream()
        data, inputs = steps.data(upstream)
        fitted = steps.fit(upstream, data, inputs)
        return steps.record(upstream, data, inputs, fitted)
