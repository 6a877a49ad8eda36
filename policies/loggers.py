"""Observers: they read the state at events and never change training."""
from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm  # not tqdm.auto: in a notebook without ipywidgets it warns at import

from policies.base import Phase, Policy, TrainState
from utils.cli import bars_on
from utils.errors import UserError
from utils.io import append_jsonl, atomic_torch_save, atomic_write_text

log = logging.getLogger(__name__)


class MetricsLogger(Policy):
    """Appends one JSON line of metrics per epoch to `metrics.jsonl`."""
    phase = Phase.OBSERVE

    name = "metrics_logger"

    def __init__(self, path: Path):
        self.path = path

    def on_fit_start(self, state: TrainState) -> None:
        """Drop lines of epochs that will run (again): a kill between this append and the checkpoint left one."""
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("epoch", -1) < state.epoch]
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def on_epoch_end(self, state: TrainState) -> None:
        append_jsonl(self.path, {"step": state.step, **state.metrics})


class ProgressBar(Policy):
    """tqdm bars for epochs and batches on a terminal; elsewhere (a log file) one line per epoch."""
    phase = Phase.OBSERVE

    name = "progress"

    def __init__(self, *, enabled: bool = True, desc: str = "train"):
        self.enabled = enabled
        self.desc = desc
        self.bars = bars_on(enabled)
        self._epochs = self._batches = None
        self._started = 0.0

    def on_fit_start(self, state: TrainState) -> None:
        self._epochs = tqdm(total=state.num_epochs, initial=state.epoch, desc=self.desc, unit="epoch",
                            disable=not self.bars, dynamic_ncols=True)

    def on_epoch_start(self, state: TrainState) -> None:
        self._started = time.perf_counter()
        self._batches = tqdm(total=state.steps_per_epoch, desc=f"epoch {state.epoch}", unit="batch",
                             leave=False, disable=not self.bars, dynamic_ncols=True)

    def on_after_optimizer_step(self, state: TrainState) -> None:
        self._batches.update(1)

    def on_epoch_end(self, state: TrainState) -> None:
        self._batches.close()
        shown = {k: round(v, 4) for k, v in state.metrics.items()
                 if k in ("train_loss", "train_acc", "test_acc", "map", "map50")}     # a detector's score: mAP
        self._epochs.set_postfix(shown)
        self._epochs.update(1)
        if self.enabled and not self.bars:
            log.info("%s epoch %d/%d: %s (%.1f s)", self.desc, state.epoch + 1, state.num_epochs,
                     " ".join(f"{k}={v:g}" for k, v in shown.items()), time.perf_counter() - self._started)

    def on_fit_end(self, state: TrainState) -> None:
        self._epochs.close()


class CheckpointSaver(Policy):
    """Writes the full training state atomically at the end of every epoch."""
    phase = Phase.SAVE

    name = "checkpoint_saver"

    def __init__(self, path: Path, collect: Callable[[], dict[str, Any]]):
        self.path = path
        self.collect = collect

    def on_epoch_end(self, state: TrainState) -> None:
        atomic_torch_save(self.path, self.collect())


class WandbLogger(Policy):
    """Logs epoch metrics to Weights & Biases; offline mode when no account is configured."""
    phase = Phase.OBSERVE

    name = "wandb"

    def __init__(self, *, project: str, group: str | None, run_name: str | None, config: dict, run_dir: Path):
        try:
            import wandb
        except ImportError:
            raise UserError("--use_wandb needs the wandb package: pip install wandb") from None
        if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"
            log.info("wandb: no WANDB_API_KEY, logging offline to %s", run_dir)
        self._run = wandb.init(project=project, group=group, name=run_name, config=config, dir=str(run_dir),
                               id=self._run_id(run_dir), resume="allow")

    @staticmethod
    def _run_id(run_dir: Path) -> str:
        """One wandb run per run directory: a resumed run continues the same wandb run (and `wandb sync` merges)."""
        path = run_dir / "wandb_id.txt"
        if path.is_file():
            return path.read_text().strip()
        run_id = secrets.token_hex(4)               # wandb run ids: lowercase letters and digits
        atomic_write_text(path, run_id + "\n")
        return run_id

    def on_epoch_end(self, state: TrainState) -> None:
        self._run.log(dict(state.metrics), step=state.step)

    def on_fit_end(self, state: TrainState) -> None:
        self._run.finish()
