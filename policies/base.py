"""Policy base class and the mutable training state every policy sees."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.num_epochs


class Policy:
    """Reacts to events. Subclasses override `on_<event>` methods they care about."""

    name: str = "policy"

    def on_event(self, event: Event, state: TrainState) -> None:
        handler = getattr(self, f"on_{event.value}", None)
        if handler is not None:
            handler(state)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly; schedules that are pure functions need nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
