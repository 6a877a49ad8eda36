"""The Manager: runs the training loop and emits events to its policies."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader

from policies.base import Batch, Policy, TrainState
from policies.driver import Driver
from policies.events import Event
from policies.tasks import ClassificationTask, Task, autocast_for, evaluate_classifier
from utils.errors import UserError

log = logging.getLogger(__name__)


class Manager(Driver):
    """Owns the loop; everything that changes training is a policy reacting to events (emitted by Driver)."""

    def __init__(self, *, state: TrainState, policies: Iterable[Policy], train_loader: DataLoader,
                 test_loader: DataLoader, label_smoothing: float = 0.0, eval_every_epochs: int = 1,
                 grad_clip_norm: float | None = None, precision: str = "fp32", accumulate_steps: int = 1,
                 frozen_modules: Iterable[nn.Module] = (), task: Task | None = None):
        super().__init__(state, policies)
        self.train_loader = train_loader
        state.train_loader = train_loader
        self.test_loader = test_loader
        self.task = task or ClassificationTask(label_smoothing=label_smoothing)
        state.task = self.task
        self.eval_every_epochs = eval_every_epochs
        self.grad_clip_norm = grad_clip_norm
        self.precision = precision
        self.accumulate_steps = accumulate_steps
        # fp16 needs gradient scaling (its range is small); bf16 has fp32's range and needs none
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16" and state.device.type == "cuda")
        self.frozen_modules = list(frozen_modules)

    def fit(self) -> dict[str, Any]:
        """Run the remaining epochs; returns the last metrics (the final epoch's test accuracy)."""
        s = self.state
        self.emit(Event.FIT_START)
        for epoch in range(s.epoch, s.num_epochs):
            self.begin_epoch(epoch, loader=self.train_loader)
            start = time.perf_counter()
            s.metrics.update(self._train_epoch())
            s.metrics["train_time_s"] = time.perf_counter() - start
            last = epoch == s.num_epochs - 1
            if last or (epoch + 1) % self.eval_every_epochs == 0:
                scored = s.eval_model if s.eval_model is not None else s.forward_model
                s.metrics.update(self.task.evaluate(scored, self.test_loader, s.device, precision=self.precision))
            self.emit(Event.EPOCH_END)
        self.emit(Event.FIT_END)
        return dict(s.metrics)

    def _train_epoch(self) -> dict[str, float]:
        s, task = self.state, self.task
        s.forward_model.train()
        for module in self.frozen_modules:
            module.eval()  # frozen BatchNorm keeps its running statistics
        stats = task.new_stats(s.device)
        batches, every = len(self.train_loader), self.accumulate_steps
        for index, (inputs, targets) in enumerate(self.train_loader):
            # Accumulation: the batches of one optimizer step (the epoch's last step may have fewer) add up to the
            # gradient one batch of them all would give; the events after the backward pass come once per step.
            first = index - index % every
            group = min(every, batches - first)
            stepping = index - first == group - 1
            inputs, targets = task.to_device(inputs, targets, s.device)
            self.emit(Event.BATCH_START)
            no_sync = getattr(s.forward_model, "no_sync", None)     # DDP: reduce the gradients once per step
            with no_sync() if no_sync is not None and not stepping else contextlib.nullcontext():
                with autocast_for(s.device, self.precision):
                    outputs = s.forward_model(inputs)
                    s.batch = Batch(inputs, targets, outputs, task.loss(outputs, targets))
                    self.emit(Event.AFTER_FORWARD)
                loss = s.batch.loss
                if not torch.isfinite(loss):
                    lr = s.optimizer.param_groups[0]["lr"]
                    raise UserError(f"loss became {loss.item()} at step {s.step} (epoch {s.epoch}) with lr {lr:g}; "
                                    "lower the learning rate in the trainer config or recipe")
                if index == first:
                    s.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(self._share(loss, group)).backward()
            if stepping:
                self._optimizer_step()
            s.batch = None
            task.update_stats(stats, outputs, targets, loss)
        return task.finish_stats(stats)

    def _share(self, loss: torch.Tensor, group: int) -> torch.Tensor:
        """What one batch back-propagates so that the step's gradient is that of one batch of all the step's
        images on all processes: a mean loss averaged over the step's batches (DDP averages over processes);
        a loss that grows with the batch summed, and times the processes (YOLOv5's `loss *= WORLD_SIZE`)."""
        if not self.task.loss_grows_with_batch:
            return loss / group
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        return loss * torch.distributed.get_world_size() if distributed else loss

    def _optimizer_step(self) -> None:
        self.optimizer_step(self._clipped_step)

    def _clipped_step(self) -> None:
        s = self.state
        if self.grad_clip_norm:
            self.scaler.unscale_(s.optimizer)
            nn.utils.clip_grad_norm_(s.model.parameters(), self.grad_clip_norm)
        self.scaler.step(s.optimizer)
        self.scaler.update()

    def training_state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly where this one stands."""
        s = self.state
        return {
            "epochs_completed": s.epoch + 1,
            "step": s.step,
            "model": s.model.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "policies": self.policies_state(),
            "metrics": dict(s.metrics),   # the last epoch's: a run killed after its last checkpoint ends with them
            # Each epoch reseeds from (seed, epoch); the state is kept for inspection and restored anyway.
            "rng": {"torch": torch.get_rng_state()},
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Load a `training_state()` dict: the next `fit()` continues with the next epoch."""
        s = self.state
        s.model.load_state_dict(checkpoint["model"])
        s.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.load_policies_state(checkpoint["policies"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        s.epoch = checkpoint["epochs_completed"]
        s.step = checkpoint["step"]
        s.metrics = dict(checkpoint.get("metrics", {}))


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *,
             precision: str = "fp32") -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy on a loader (the classification task's evaluation)."""
    return evaluate_classifier(model, loader, device, precision=precision)
