"""Policy base class and the mutable training state every policy sees."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from policies.events import Event


@dataclass
class Batch:
    """One training step's inputs, targets, the model's outputs (`logits` for a classifier) and the loss."""

    inputs: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    loss: torch.Tensor


@dataclass
class RunContext:
    """What a run offers its policies at Event.INIT, so they wire themselves instead of the run reaching into the
    policy list: the policies, a way to load a model from a checkpoint path (the runs layer's loader, which policies
    may not import), the teacher the user named (a path, or a model in a user's loop) and the run's class count."""

    policies: list["Policy"] = field(default_factory=list)
    load_model: Callable[[str], nn.Module] | None = None
    teacher: str | nn.Module | None = None
    num_classes: int | None = None


@dataclass
class TrainState:
    """What the loop knows; policies read and change it. Derived values only, no user config."""

    model: nn.Module                    # the bare model (parameter names without `module.`)
    forward_model: nn.Module            # what runs the forward pass (DataParallel wrapper or model)
    optimizer: torch.optim.Optimizer
    device: torch.device
    steps_per_epoch: int
    num_epochs: int
    seed: int
    run_dir: Path | None = None
    epoch: int = 0                      # the epoch being run (or next to run)
    step: int = 0                       # optimizer steps taken so far
    metrics: dict[str, Any] = field(default_factory=dict)
    batch: Batch | None = None          # the step in progress (AFTER_FORWARD may replace its loss)
    train_loader: Any = None            # the training data (second-order pruning samples gradients from it)
    task: Any = None                    # the run's policies.tasks.Task (its loss), set by the Manager
    eval_model: nn.Module | None = None  # what evaluation scores instead of forward_model (an EMA of the weights)
    context: RunContext = field(default_factory=RunContext)     # what INIT offers (Driver.wire)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.num_epochs


class Phase(IntEnum):
    """Where a policy acts within each event, whatever order it was listed in (the Manager sorts by phase, stably):
    schedules set the LR and weight decay first; then what changes the weights or the loss (masks, pruning, QAT,
    distillation: MASK, the default), so the weights are masked when the average reads them; then the weights'
    average (EMA); then observers (metrics, progress, wandb), which see the step done; and the checkpoint last, so a
    metrics line never outruns the checkpoint that resumes past it."""

    SCHEDULE = 0
    MASK = 1
    AVERAGE = 2
    OBSERVE = 3
    SAVE = 4


def in_phase_order(policies: Iterable["Policy"]) -> list["Policy"]:
    """`policies` sorted by phase; within a phase in the order given (a recipe's modifiers keep their order). An
    object that only has the protocol (`on_event`, `state_dict`) and no phase acts in MASK, the default."""
    return sorted(policies, key=lambda p: getattr(p, "phase", Phase.MASK))


class Policy:
    """Reacts to events. Subclasses override `on_<event>` methods they care about, and say their `phase`."""

    name: str = "policy"
    phase: Phase = Phase.MASK

    def on_event(self, event: Event, state: TrainState) -> None:
        handler = getattr(self, f"on_{event.value}", None)
        if handler is not None:
            handler(state)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly; schedules that are pure functions need nothing."""
        return {}

    def facts(self) -> dict[str, Any]:
        """What this policy says about the finished run, for its records (merged in policy order, later policies
        winning): e.g. the LR that drove it, the layers it removed, the pruning method."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
