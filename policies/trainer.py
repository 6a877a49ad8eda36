"""The trainer config (optimizer + LR schedule) and the policy that applies it.

Schedules are pure functions of the optimizer step, so resuming needs no hidden counters.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt, model_validator

from policies.base import Phase, Policy, TrainState
from policies.ema import EmaConfig
from utils.config import StrictModel
from utils.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
BIAS_GROUP = "biases"          # a detector's bias parameter group (YOLOv5 warms its lr up from above)
LR_SCHEDULES: Registry = Registry("lr schedule")


class OptimizerConfig(StrictModel):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    no_weight_decay_on_bn_and_bias: bool = False


class ScheduleConfig(StrictModel):
    name: Literal["step", "cosine", "linear", "constant"] = "step"
    milestones_epochs: list[float] = Field(default_factory=lambda: [50, 100])
    gamma: float = Field(default=0.1, gt=0)
    final_lr: float = Field(default=0.0, ge=0)
    warmup_epochs: float = Field(default=0.0, ge=0)
    warmup_start_lr: float = Field(default=0.0, ge=0)
    warmup_min_steps: int = Field(default=0, ge=0)          # the warm-up lasts at least this many optimizer steps
    warmup_min_batches: int = Field(default=0, ge=0)        # ... or batches (YOLOv5's 100 iterations, accumulated)
    warmup_momentum: float | None = Field(default=None, ge=0, lt=1)   # SGD momentum rises from this (YOLOv5: 0.8)
    warmup_bias_lr: float | None = Field(default=None, ge=0)  # a detector's bias group falls from this lr (0.1)
    # YOLOv5's (torch's LambdaLR stepped once an epoch): the value changes at epoch ends and the cosine counts from
    # epoch 0; a warm-up rises to the value of the epoch it is in
    per_epoch: bool = False


class TrainerConfig(StrictModel):
    """A `configs/trainers/*.yaml` file."""

    epochs: PositiveInt = 150
    batch_size: PositiveInt = 64
    test_batch_size: PositiveInt | None = None
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    eval_every_epochs: PositiveInt = 1
    grad_clip_norm: float | None = Field(default=None, gt=0)
    optimizer: OptimizerConfig
    schedule: ScheduleConfig = ScheduleConfig()
    ema: EmaConfig | None = None               # evaluate and keep a moving average of the weights (YOLOv5's)
    mosaic: float = Field(default=0.0, ge=0, le=1)   # detection: the share of YOLOv5 four-image mosaic samples
    # Gradient accumulation: one optimizer step per `accumulate_steps` batches (their mean gradient), or YOLOv5's
    # rule: `nominal_batch_size` (its nbs, 64) / the batch size, rounded, with the weight decay scaled to match.
    accumulate_steps: PositiveInt = 1
    nominal_batch_size: PositiveInt | None = None

    @model_validator(mode="after")
    def _one_accumulation_rule(self) -> "TrainerConfig":
        if self.nominal_batch_size is not None and self.accumulate_steps != 1:
            raise ValueError("give accumulate_steps or nominal_batch_size, not both")
        return self


def accumulation(cfg: TrainerConfig, batch_size: int, steps: int | None = None) -> tuple[int, float]:
    """(batches per optimizer step, weight decay) for a run whose batch (over all processes) is `batch_size`.

    `steps` (a command line's) wins over the config. With `nominal_batch_size` it is YOLOv5's rule:
    max(round(nbs / batch), 1) batches, and the weight decay times batch * steps / nbs."""
    decay = cfg.optimizer.weight_decay
    if steps is not None:
        return steps, decay
    if cfg.nominal_batch_size is None:
        return cfg.accumulate_steps, decay
    steps = max(round(cfg.nominal_batch_size / batch_size), 1)
    return steps, decay * batch_size * steps / cfg.nominal_batch_size


@OPTIMIZERS.register("sgd")
def build_sgd(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam")
def build_adam(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def build_adamw(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig, task: Any = None) -> torch.optim.Optimizer:
    """Optimizer over trainable parameters: the parameter groups the run's task wants (Task.param_groups: a
    detector's are YOLOv5's three), else one group, optionally without weight decay on BN weights and biases."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    wanted = task.param_groups(model, cfg.weight_decay) if task is not None else None
    if wanted is not None:
        return OPTIMIZERS.get(cfg.name)(wanted, cfg)
    if cfg.no_weight_decay_on_bn_and_bias:
        decay = [p for _, p in params if p.ndim > 1]
        no_decay = [p for _, p in params if p.ndim <= 1]
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    else:
        groups = [{"params": [p for _, p in params]}]
    return OPTIMIZERS.get(cfg.name)(groups, cfg)


@LR_SCHEDULES.register("step")
def step_lr(progress_epochs: float, base_lr: float, total_epochs: float, cfg: ScheduleConfig) -> float:
    """Multiply by gamma after each milestone (the study: x0.1 after epochs 50 and 100 of 150)."""
    del total_epochs
    passed = sum(progress_epochs >= m for m in cfg.milestones_epochs)
    return base_lr * cfg.gamma**passed


@LR_SCHEDULES.register("cosine")
def cosine_lr(progress_epochs: float, base_lr: float, total_epochs: float, cfg: ScheduleConfig) -> float:
    offset = 0.0 if cfg.per_epoch else cfg.warmup_epochs
    span = max(total_epochs - offset, 1e-12)
    t = min(max((progress_epochs - offset) / span, 0.0), 1.0)
    return cfg.final_lr + 0.5 * (base_lr - cfg.final_lr) * (1 + math.cos(math.pi * t))


@LR_SCHEDULES.register("linear")
def linear_lr(progress_epochs: float, base_lr: float, total_epochs: float, cfg: ScheduleConfig) -> float:
    """YOLOv5's default: from base_lr at epoch 0 straight down to final_lr at the last epoch (a warm-up rises to
    where the line stands when it ends)."""
    t = min(max(progress_epochs / max(total_epochs, 1e-12), 0.0), 1.0)
    return base_lr + (cfg.final_lr - base_lr) * t


@LR_SCHEDULES.register("constant")
def constant_lr(progress_epochs: float, base_lr: float, total_epochs: float, cfg: ScheduleConfig) -> float:
    del progress_epochs, total_epochs, cfg
    return base_lr


def warmup_epochs(cfg: ScheduleConfig, steps_per_epoch: int, batches_per_epoch: int | None = None) -> float:
    """How long the warm-up lasts, in epochs (at least `warmup_min_steps` optimizer steps and `warmup_min_batches`
    batches when they are set; an epoch has more batches than steps under gradient accumulation)."""
    if not (cfg.warmup_epochs or cfg.warmup_min_steps or cfg.warmup_min_batches):
        return 0.0
    return max(cfg.warmup_epochs, cfg.warmup_min_steps / steps_per_epoch,
               cfg.warmup_min_batches / (batches_per_epoch or steps_per_epoch))


def lr_at(step: int, *, steps_per_epoch: int, total_epochs: int, base_lr: float, cfg: ScheduleConfig,
          start_lr: float | None = None, batches_per_epoch: int | None = None) -> float:
    """The learning rate for optimizer step `step` (0-based): linear warm-up from `start_lr` (default the config's
    warmup_start_lr) to the schedule's value at the end of the warm-up, then the schedule."""
    epoch, span = step / steps_per_epoch, warmup_epochs(cfg, steps_per_epoch, batches_per_epoch)
    schedule = LR_SCHEDULES.get(cfg.name)
    start = cfg.warmup_start_lr if start_lr is None else start_lr
    if cfg.per_epoch:
        value = schedule(float(math.floor(epoch)), base_lr, total_epochs, cfg)
        return start + (value - start) * epoch / span if epoch < span else value
    if epoch < span:
        yolov5 = cfg.warmup_min_steps or cfg.warmup_min_batches     # YOLOv5 warms up to where the schedule stands
        target = schedule(span, base_lr, total_epochs, cfg) if yolov5 else base_lr
        return start + (target - start) * epoch / span
    return schedule(epoch, base_lr, total_epochs, cfg)


def momentum_at(step: int, *, steps_per_epoch: int, momentum: float, cfg: ScheduleConfig,
                batches_per_epoch: int | None = None) -> float:
    """SGD momentum for optimizer step `step`: from `warmup_momentum` up to `momentum` over the warm-up."""
    span = warmup_epochs(cfg, steps_per_epoch, batches_per_epoch)
    if cfg.warmup_momentum is None or step / steps_per_epoch >= span:
        return momentum
    return cfg.warmup_momentum + (momentum - cfg.warmup_momentum) * step / steps_per_epoch / span


class LRSchedulePolicy(Policy):
    """Sets every param group's lr from `lr_at(state.step)` before each batch (a detector's bias group from
    `warmup_bias_lr` during the warm-up), and SGD's momentum from `momentum_at` when the config warms it up."""
    phase = Phase.SCHEDULE

    name = "lr_schedule"

    def __init__(self, *, base_lr: float, cfg: ScheduleConfig, momentum: float | None = None):
        self.base_lr = base_lr
        self.cfg = cfg
        self.momentum = momentum

    def on_batch_start(self, state: TrainState) -> None:
        batches = len(state.train_loader) if hasattr(state.train_loader, "__len__") else None
        when = dict(steps_per_epoch=state.steps_per_epoch, total_epochs=state.num_epochs, base_lr=self.base_lr,
                    cfg=self.cfg, batches_per_epoch=batches)
        lr = lr_at(state.step, **when)
        bias_lr = lr
        if self.cfg.warmup_bias_lr is not None:
            bias_lr = lr_at(state.step, **when, start_lr=self.cfg.warmup_bias_lr)
        momentum = None
        if self.cfg.warmup_momentum is not None and self.momentum is not None:
            momentum = momentum_at(state.step, steps_per_epoch=state.steps_per_epoch, momentum=self.momentum,
                                   cfg=self.cfg, batches_per_epoch=batches)
        for group in state.optimizer.param_groups:
            group["lr"] = bias_lr if group.get("name") == BIAS_GROUP else lr
            if momentum is not None and "momentum" in group:
                group["momentum"] = momentum
        state.metrics["lr"] = lr
