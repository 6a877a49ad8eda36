"""Full fine-tuning: one run from options to result, in named stages (main.py calls `run_full_finetuning`).

    plan (utils.runs.plan)  ->  upstream + data  ->  prepare the model  ->  policies  ->  fit  ->  record
    (utils.runs.record)
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import build_model
from policies.base import Policy, TrainState
from policies.ema import EmaPolicy
from policies.loggers import CheckpointSaver, MetricsLogger, ProgressBar, WandbLogger
from policies.manager import Manager
from policies.masking import FixedMaskPolicy, MaskPolicy
from policies.modifiers import RecipeSchedule, recipe_method
from policies.modifiers.distillation import DistillationModifier
from policies.modifiers.layers import LayerPruningModifier
from policies.tasks import ClassificationTask, Task, fastest_precision
from policies.trainer import LRSchedulePolicy, build_optimizer
from utils.checkpoints import check_dense_label
from utils.data import DatasetSplits, load_datasets, load_detection_datasets
from utils.data.verify import image_sizes
from utils.detection import DetectionTask
from utils.detection.anchors import check_anchors_
from utils.errors import UserError
from utils.runs.dirs import check_same_settings, finished_result, run_lock, write_run_config
from utils.runs.evaluate import evaluate_only
from utils.runs.kinds import InputSettings, RunResult
from utils.runs.options import FullOptions, TransferConfig
from utils.runs.plan import Plan, default_exp_name, plan_run, run_dir_of
from utils.runs.recipe import build_run_recipe
from utils.runs.record import check_sparsity, finish, resolved_config
from utils.runs.setup import Upstream, freeze_, load_upstream, make_loaders, reinitialize_unloaded_
from utils.seed import seed_everything
from utils.sparsity import masks_from_zeros, measured_sparsity, sparse_layers
from utils.tasks import is_detection

__all__ = ["default_exp_name", "load_data", "run_full_finetuning"]

log = logging.getLogger(__name__)


def load_data(upstream: Upstream, *, dataset: str, dataset_path: str | None, image_size: int | None,
              interpolation: str | None, max_train_samples: int | None, seed: int,
              mosaic: float = 0.0, checkpoint: str | None = None) -> tuple[DatasetSplits, InputSettings]:
    """The downstream splits, prepared as the upstream expects (its resize and normalisation unless overridden)."""
    detector = is_detection(arch=upstream.arch)
    if detector != is_detection(dataset=dataset):
        data = dataset_path if dataset == "yolo" and dataset_path else dataset
        model = f"the checkpoint {checkpoint} holds {upstream.arch}" if checkpoint else upstream.arch
        raise UserError(f"{model}, a {'detector' if detector else 'classifier'}, and the data {data!r} is a "
                        f"{'classification' if detector else 'detection'} dataset; detectors (yolov5*) train on YOLO "
                        "data (a data.yaml), classifiers on image datasets: give a checkpoint of the data's task")
    inputs = InputSettings(image_size=upstream.image_size(image_size),
                           interpolation=interpolation or upstream.interpolation,
                           normalization=upstream.normalization)
    if detector:
        path = dataset if dataset != "yolo" else dataset_path
        if path is None:
            raise UserError("--dset yolo needs --dset_path pointing at the dataset's data.yaml")
        data = load_detection_datasets(path, imgsz=inputs.image_size, max_train_samples=max_train_samples, seed=seed,
                                       mosaic=mosaic)
        return data, InputSettings(image_size=inputs.image_size, interpolation="bilinear",
                                   normalization={"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]})
    mean, std = inputs.mean_std()
    data = load_datasets(dataset, dataset_path, image_size=inputs.image_size, interpolation=inputs.interpolation,
                         mean=mean, std=std, max_train_samples=max_train_samples, seed=seed)
    return data, inputs


def task_for(model: nn.Module, *, image_size: int, label_smoothing: float) -> Task:
    """What the run learns: a detector's loss and mAP, or a classifier's cross-entropy and accuracy."""
    if is_detection(model=model):
        return DetectionTask(model, imgsz=image_size)
    return ClassificationTask(label_smoothing=label_smoothing)


def prepare_model_(upstream: Upstream, *, num_classes: int, transfer: TransferConfig,
                   device: torch.device) -> tuple[dict[str, torch.Tensor], list[nn.Module]]:
    """New head, optional re-initialisation and freezing; returns (the masks to hold, the frozen modules).

    The mask held during fine-tuning is the loaded zeros (the loader checked they agree with any stored
    mask), so the sparsity pattern is kept exactly, zero for zero.
    """
    model = upstream.model
    model.reset_classifier(num_classes)
    if transfer.load_modules is not None:
        fresh = build_model(upstream.arch, num_classes=num_classes, **upstream.arch_kwargs)
        reset = reinitialize_unloaded_(model, fresh, transfer.load_modules, model.classifier_name)
        log.info("re-initialised %d tensors outside load_modules", len(reset))
    masks = masks_from_zeros(sparse_layers(model))
    frozen = freeze_(model, transfer)
    model.to(device)
    return masks, frozen


def observers(run_dir: Path, *, progress: bool, wandb: dict[str, Any] | None) -> list[Policy]:
    """What watches the run (the main process only): metrics.jsonl, a progress bar, optionally wandb."""
    found: list[Policy] = [MetricsLogger(run_dir / "metrics.jsonl"), ProgressBar(enabled=progress, desc=run_dir.name)]
    if wandb is not None:
        found.append(WandbLogger(**wandb, run_dir=run_dir))
    return found


def fit(state: TrainState, policies: list[Policy], *, plan: Plan, loaders: tuple, precision: str,
        frozen: list[nn.Module], task: Task) -> dict[str, Any]:
    """Run (or resume) the loop; returns the final epoch's metrics."""
    trainer = plan.trainer
    manager = Manager(state=state, policies=policies, train_loader=loaders[0], test_loader=loaders[1],
                      eval_every_epochs=trainer.eval_every_epochs, grad_clip_norm=trainer.grad_clip_norm,
                      precision=precision, accumulate_steps=plan.accumulate, frozen_modules=frozen, task=task)
    if plan.dist.is_main:
        manager.add(CheckpointSaver(plan.run_dir / "checkpoint.pt", manager.training_state))
    if plan.status == "resume":
        manager.restore(torch.load(plan.run_dir / "checkpoint.pt", map_location=state.device, weights_only=True))
        log.info("resuming %s at epoch %d (step %d)", plan.run_dir, state.epoch, state.step)
    if precision == "fp16" and state.device.type != "cuda":
        log.warning("--precision fp16 needs CUDA; training in fp32 on %s (bf16 runs on CPUs)", state.device)
    return manager.fit()


def run_full_finetuning(opts: FullOptions) -> RunResult:
    """Fine-tune every (unfrozen) weight of a sparse checkpoint, keeping its zeros; returns the result."""
    with run_lock(run_dir_of(opts)):
        return fine_tune(opts)


def fine_tune(opts: FullOptions) -> RunResult:
    """The run itself, with the run directory held: plan, load, prepare, fit, record."""
    plan = plan_run(opts)
    if plan.status == "finished":
        check_same_settings(plan.run_dir, {"options": opts.model_dump(exclude={"resume", "progress"}),
                                           "trainer": plan.trainer.model_dump()})
        log.info("%s is already finished; reporting its result", plan.run_dir)
        return finished_result(plan.run_dir, plan.experiment_root)
    seed_everything(opts.seed)
    upstream = load_upstream(checkpoint_path=opts.from_checkpoint_path, flavour=opts.checkpoint_flavour,
                             arch=opts.arch, keep_classifier=opts.eval_only)
    data, inputs = load_data(upstream, dataset=opts.dataset, dataset_path=opts.dataset_path,
                             checkpoint=opts.from_checkpoint_path,
                             image_size=opts.image_size, interpolation=opts.interpolation,
                             max_train_samples=opts.max_train_samples, seed=opts.seed,
                             mosaic=0.0 if opts.eval_only else plan.trainer.mosaic)
    if plan.trainer.mosaic and not opts.eval_only and not is_detection(arch=upstream.arch):
        raise UserError(f"{opts.trainer_config_path}: 'mosaic: {plan.trainer.mosaic}' is detection augmentation and "
                        f"{upstream.arch} is a classifier; remove the key (or set it to 0)")
    if opts.eval_only:
        return evaluate_only(upstream, data, opts=opts, device=plan.device, run_dir=plan.run_dir,
                             task=task_for(upstream.model, image_size=inputs.image_size, label_smoothing=0.0))
    seed_everything(opts.seed)
    masks, frozen = prepare_model_(upstream, num_classes=data.num_classes, transfer=plan.transfer, device=plan.device)
    # a resumed run has its anchors
    if is_detection(arch=upstream.arch) and not opts.noautoanchor and plan.status != "resume":
        known = image_sizes([Path(image) for image, _ in data.train.items], root=data.root)   # the check's cache
        log.info("%s", check_anchors_(upstream.model.get_classifier(), data.train.items, data.train.labels,
                                      imgsz=inputs.image_size, seed=opts.seed, image_wh=known))
    loaded_sparsity = measured_sparsity(upstream.model)
    loaders = make_loaders(data, batch_size=plan.batch_size, test_batch_size=plan.trainer.test_batch_size or
                           plan.batch_size, workers=opts.workers, device=plan.device, dist=plan.dist)
    steps_per_epoch = math.ceil(len(loaders[0]) / plan.accumulate)    # optimizer steps
    if plan.accumulate > len(loaders[0]):
        log.warning("gradient accumulation over %d batches, but an epoch has %d: each epoch makes one optimizer step "
                    "over its %d batches (accumulation does not cross epochs); lower --accumulate_steps (or the "
                    "nominal batch size) to at most %d", plan.accumulate, len(loaders[0]), len(loaders[0]),
                    len(loaders[0]))
    schedule, epochs = training_schedule(opts, plan, model=upstream.model, masks=masks,
                                         steps_per_epoch=steps_per_epoch, embedded_recipe=upstream.recipe)
    state = train_state(upstream.model, plan, epochs=epochs, steps_per_epoch=steps_per_epoch, seed=opts.seed,
                        compile_model=opts.compile)
    resolved = resolved_config(opts, plan, upstream=upstream, data=data, inputs=inputs, state=state,
                               loaded_sparsity=loaded_sparsity)
    policies = list(schedule)
    if plan.dist.is_main:  # only the main process observes and writes; every rank runs the same schedule
        write_run_config(plan.run_dir, resolved, check_existing=plan.status == "resume")
        wandb = dict(project=opts.wandb_project, group=opts.wandb_group, config=resolved,
                     run_name=opts.wandb_name or plan.run_dir.name) if opts.use_wandb else None
        policies += observers(plan.run_dir, progress=opts.progress, wandb=wandb)
    task = task_for(upstream.model, image_size=inputs.image_size, label_smoothing=plan.trainer.label_smoothing)
    if opts.channels_last:
        upstream.model.to(memory_format=torch.channels_last)
        task.channels_last = True
    precision = run_precision(opts.precision, plan.device)
    metrics = fit(state, policies, plan=plan, loaders=loaders, precision=precision, frozen=frozen, task=task)
    final_masks = check_sparsity(upstream.model, masks, recipe=opts.recipe is not None,
                                 loaded_sparsity=loaded_sparsity)
    label = opts.model_label or recipe_method(schedule) or upstream.method
    if label == upstream.method and opts.from_checkpoint_path:
        check_dense_label(label, loaded_sparsity, opts.from_checkpoint_path)
    removed = [n for p in schedule if isinstance(p, LayerPruningModifier) for n in p.removed]
    return finish(opts, plan, upstream=upstream, masks=final_masks, metrics=metrics, inputs=inputs, label=label,
                  extra={"classes": data.classes, **({"removed_layers": removed} if removed else {})},
                  loaded_sparsity=loaded_sparsity, epochs=epochs, git_commit=resolved["git_commit"],
                  dataset_name=opts.dataset_label(), precision=precision, hyper=hyper_parameters_used(plan, schedule))


def hyper_parameters_used(plan: Plan, policies: list[Policy]) -> dict[str, float]:
    """The LR (first and peak) and weight decay that drove training: a recipe's replayed schedule where it has
    one (its LR modifiers override the trainer config's), else the trainer config's (its schedule peaks at lr)."""
    recipe = next((p for p in policies if isinstance(p, RecipeSchedule)), None)
    if recipe is not None:
        return recipe.used()
    return {"lr_initial": plan.lr, "lr_peak": plan.lr, "weight_decay": plan.weight_decay}


def training_schedule(opts: FullOptions, plan: Plan, *, model: nn.Module, masks: dict[str, torch.Tensor],
                      steps_per_epoch: int, embedded_recipe: str | None = None) -> tuple[list[Policy], int]:
    """What changes training, and for how many epochs; the trainer's weight average (EMA) comes last, after
    every mask has been applied."""
    policies, epochs = schedule_policies(opts, plan, model=model, masks=masks, steps_per_epoch=steps_per_epoch,
                                         embedded_recipe=embedded_recipe)
    if plan.trainer.ema is not None:
        policies.append(EmaPolicy(plan.trainer.ema, mask_policies=[p for p in policies if isinstance(p, MaskPolicy)]))
    return policies, epochs


def schedule_policies(opts: FullOptions, plan: Plan, *, model: nn.Module, masks: dict[str, torch.Tensor],
                      steps_per_epoch: int, embedded_recipe: str | None) -> tuple[list[Policy], int]:
    """(LR schedule + fixed masks, the trainer's epochs), or what a recipe says instead (it sets the epochs)."""
    if opts.recipe:
        policies, epochs, _ = build_run_recipe(opts.recipe, opts.recipe_args, model=model,
                                               steps_per_epoch=steps_per_epoch, run_dir=plan.run_dir,
                                               resuming=plan.status == "resume", epochs_flag=opts.epochs,
                                               embedded=embedded_recipe, checkpoint=opts.from_checkpoint_path)
        for distill in (p for p in policies if isinstance(p, DistillationModifier)):
            attach_teacher(distill, opts.distill_teacher, num_classes=model.get_classifier().out_features)
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


def attach_teacher(distill: DistillationModifier, flag: str | None, *, num_classes: int) -> None:
    """Load the teacher (the flag's checkpoint over the recipe's); it must predict the same classes."""
    path = flag or distill.teacher_path
    if path is None:
        return      # "self", or the modifier reports the missing teacher when training starts
    teacher = load_upstream(checkpoint_path=path, flavour=None, arch=None, keep_classifier=True).model
    classes = teacher.get_classifier().out_features
    if classes != num_classes:
        raise UserError(f"{path}: the distillation teacher predicts {classes} classes, the student {num_classes}; "
                        "use a teacher fine-tuned on this dataset")
    distill.teacher, distill.self_teacher = teacher, False


def train_state(model: nn.Module, plan: Plan, *, epochs: int, steps_per_epoch: int, seed: int,
                compile_model: bool = False) -> TrainState:
    """The loop's state: the optimizer over the model, and the model wrapped for several devices if asked, or
    compiled (torch.compile; the parameters, so the masks and the optimizer, are the model's own)."""
    optimizer = build_optimizer(model, plan.trainer.optimizer.model_copy(update={"lr": plan.lr,
                                                                                "weight_decay": plan.weight_decay}))
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


