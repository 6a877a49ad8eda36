"""What trains a full run: the policies (a recipe's, or the trainer config's LR schedule and fixed masks; EMA after
them; observers on the main process), the loop's state, the precision, the loop itself, and what the policies that
ran say about the run (hyper-parameters, removed layers, the recipe's method)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import classifier_outputs
from policies.base import Policy, RunContext, TrainState
from policies.ema import EmaPolicy
from policies.loggers import CheckpointSaver, MetricsLogger, ProgressBar, WandbLogger
from policies.manager import Manager
from policies.masking import FixedMaskPolicy
from policies.tasks import Task, fastest_precision
from policies.trainer import LRSchedulePolicy, build_optimizer
from utils.checkpoints import check_dense_label
from utils.errors import UserError
from utils.runs.options import FullOptions
from utils.runs.plan import Plan
from utils.runs.recipe import build_run_recipe
from utils.runs.setup import load_upstream

log = logging.getLogger(__name__)


def observers(run_dir: Path, *, progress: bool, wandb: dict[str, Any] | None) -> list[Policy]:
    """What watches the run (the main process only): metrics.jsonl, a progress bar, optionally wandb."""
    found: list[Policy] = [MetricsLogger(run_dir / "metrics.jsonl"), ProgressBar(enabled=progress, desc=run_dir.name)]
    if wandb is not None:
        found.append(WandbLogger(**wandb, run_dir=run_dir))
    return found


def main_process_observers(opts: FullOptions, plan: Plan, resolved: dict[str, Any]) -> list[Policy]:
    """The observers of this process: none on the other ranks of a distributed run (every rank runs the same
    schedule; only the main one writes)."""
    if not plan.dist.is_main:
        return []
    wandb = dict(project=opts.wandb_project, group=opts.wandb_group, config=resolved,
                 run_name=opts.wandb_name or plan.run_dir.name) if opts.use_wandb else None
    return observers(plan.run_dir, progress=opts.progress, wandb=wandb)


def fit(state: TrainState, policies: list[Policy], *, plan: Plan, loaders: tuple, precision: str,
        frozen: list[nn.Module], task: Task, context: RunContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run (or resume) the loop, the policies wired from `context` first (Event.INIT); returns the final epoch's
    metrics and what the policies say about the run (Policy.facts)."""
    trainer = plan.trainer
    manager = Manager(state=state, policies=policies, train_loader=loaders[0], test_loader=loaders[1],
                      eval_every_epochs=trainer.eval_every_epochs, grad_clip_norm=trainer.grad_clip_norm,
                      precision=precision, accumulate_steps=plan.accumulate, frozen_modules=frozen, task=task)
    if plan.dist.is_main:
        manager.add(CheckpointSaver(plan.run_dir / "checkpoint.pt", manager.training_state))
    manager.wire(context)
    if plan.status == "resume":
        manager.restore(torch.load(plan.run_dir / "checkpoint.pt", map_location=state.device, weights_only=True))
        log.info("resuming %s at epoch %d (step %d)", plan.run_dir, state.epoch, state.step)
    if precision == "fp16" and state.device.type != "cuda":
        log.warning("--precision fp16 needs CUDA; training in fp32 on %s (bf16 runs on CPUs)", state.device)
    return manager.fit(), manager.facts()


def run_context(opts: FullOptions, model: nn.Module) -> RunContext:
    """What the run offers its policies at INIT: the checkpoint loader (a distillation teacher), --distill_teacher,
    the student's class count."""
    def load_model(path: str) -> nn.Module:
        return load_upstream(checkpoint_path=path, flavour=None, arch=None, keep_classifier=True).model

    return RunContext(load_model=load_model, teacher=opts.distill_teacher,
                      num_classes=classifier_outputs(model))


def run_facts(opts: FullOptions, plan: Plan, facts: dict[str, Any], upstream_method: str, *,
              loaded_sparsity: float) -> dict[str, Any]:
    """The run's record from what its policies said: the method label (--model_label, else the recipe's pruning
    method, else the upstream's: checked against the sparsity it was loaded with), the layers a recipe removed, and
    the LR (first and peak) and weight decay that drove training (a recipe's replayed schedule where it has one,
    else the trainer config's, which peaks at lr)."""
    label = opts.model_label or facts.get("method") or upstream_method
    if label == upstream_method and opts.from_checkpoint_path:
        check_dense_label(label, loaded_sparsity, opts.from_checkpoint_path)
    return {"label": label,
            "removed_layers": facts.get("removed_layers", []),
            "hyper": facts.get("hyper") or {"lr_initial": plan.lr, "lr_peak": plan.lr,
                                            "weight_decay": plan.weight_decay}}


def training_schedule(opts: FullOptions, plan: Plan, *, model: nn.Module, masks: dict[str, torch.Tensor],
                      steps_per_epoch: int, embedded_recipe: str | None = None) -> tuple[list[Policy], int]:
    """What changes training, and for how many epochs; the trainer's weight average (EMA) comes last, after
    every mask has been applied."""
    policies, epochs = schedule_policies(opts, plan, model=model, masks=masks, steps_per_epoch=steps_per_epoch,
                                         embedded_recipe=embedded_recipe)
    if plan.trainer.ema is not None:
        policies.append(EmaPolicy(plan.trainer.ema))         # it finds the masks to hold at INIT
    return policies, epochs


def schedule_policies(opts: FullOptions, plan: Plan, *, model: nn.Module, masks: dict[str, torch.Tensor],
                      steps_per_epoch: int, embedded_recipe: str | None) -> tuple[list[Policy], int]:
    """(LR schedule + fixed masks, the trainer's epochs), or what a recipe says instead (it sets the epochs)."""
    if opts.recipe:
        policies, epochs, _ = build_run_recipe(opts.recipe, opts.recipe_args, model=model,
                                               steps_per_epoch=steps_per_epoch, run_dir=plan.run_dir,
                                               resuming=plan.status == "resume", epochs_flag=opts.epochs,
                                               embedded=embedded_recipe, checkpoint=opts.from_checkpoint_path)
        return policies, epochs
    if opts.distill_teacher:
        raise UserError("--distill_teacher needs a --recipe with a DistillationModifier")
    if embedded_recipe is not None:
        log.info("%s carries the recipe it was trained with; run it with --recipe checkpoint "
                 "(this run uses the trainer config)", opts.from_checkpoint_path)
    optimizer = plan.trainer.optimizer
    schedule = LRSchedulePolicy(base_lr=plan.lr, cfg=plan.trainer.schedule,
                                momentum=optimizer.momentum if optimizer.name == "sgd" else None)
    return [schedule, FixedMaskPolicy(masks)], plan.epochs


def train_state(model: nn.Module, plan: Plan, *, task: Task, epochs: int, steps_per_epoch: int, seed: int,
                compile_model: bool = False) -> TrainState:
    """The loop's state: the optimizer over the model (in the parameter groups `task` wants), and the model wrapped
    for several devices if asked, or compiled (torch.compile; the parameters, so the masks and the optimizer, are
    the model's own)."""
    optimizer = build_optimizer(model, plan.trainer.optimizer.model_copy(update={"lr": plan.lr,
                                                                                "weight_decay": plan.weight_decay}),
                                task=task)
    if plan.dist.enabled:
        forward_model = nn.parallel.DistributedDataParallel(model, device_ids=plan.gpus or None)
    else:
        forward_model = nn.DataParallel(model, device_ids=plan.gpus) if len(plan.gpus) > 1 else model
    if compile_model:
        forward_model = torch.compile(forward_model)
    return TrainState(model=model, forward_model=forward_model, optimizer=optimizer, device=plan.device,
                      steps_per_epoch=steps_per_epoch, num_epochs=epochs, seed=seed, run_dir=plan.run_dir)


def run_precision(requested: str, device: torch.device) -> str:
    """The precision a run trains in: as asked, or for 'auto' the fastest this device runs (probed once)."""
    if requested != "auto":
        return requested
    if device not in _PROBED:
        _PROBED[device] = fastest_precision(device)
        log.info("--precision auto: %s on %s", _PROBED[device], device)
    return _PROBED[device]


_PROBED: dict[torch.device, str] = {}


