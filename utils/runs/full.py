"""Full fine-tuning: one run from options to result, in named stages (main.py calls `run_full_finetuning`).

    plan  ->  upstream + data  ->  prepare the model  ->  policies  ->  fit  ->  record
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import build_model, model_task
from policies.base import Policy, TrainState
from policies.loggers import CheckpointSaver, MetricsLogger, ProgressBar, WandbLogger
from policies.manager import Manager
from policies.ema import EmaPolicy
from policies.masking import FixedMaskPolicy, MaskPolicy
from policies.modifiers import recipe_method
from policies.modifiers.distillation import DistillationModifier
from policies.modifiers.layers import LayerPruningModifier
from policies.quantization import qat_modules, qat_state
from policies.tasks import ClassificationTask, Task, fastest_precision
from policies.trainer import LRSchedulePolicy, TrainerConfig, build_optimizer
from utils.checkpoints import save_native_checkpoint
from utils.config import load_config
from utils.data import (DatasetSplits, content_fingerprint, is_detection_dataset, load_detection_datasets,
                        load_datasets)
from utils.detection import DetectionTask
from utils.distributed import DistInfo, barrier, init_distributed, shutdown
from utils.errors import UserError
from utils.runs.dirs import (check_results_table, check_same_settings, environment_info, finished_result, now_iso,
                             prepare_run_dir, record_result, run_dir_for, run_lock, write_run_config)
from utils.runs.kinds import InputSettings, RunResult
from utils.runs.evaluate import evaluate_only
from utils.runs.options import FullOptions, TransferConfig
from utils.runs.recipe import build_run_recipe
from utils.runs.setup import (Upstream, freeze_, load_upstream, make_loaders, per_rank_batch_size, pick_device,
                              reinitialize_unloaded_)
from utils.seed import seed_everything
from utils.sparsity import layer_sparsity, masks_from_zeros, measured_sparsity, prunable_parameters, sparse_layers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """The options resolved: configs read, device and processes chosen, the run directory decided."""

    trainer: TrainerConfig
    transfer: TransferConfig
    epochs: int
    batch_size: int                # per process
    lr: float
    device: torch.device
    gpus: list[int]
    dist: DistInfo
    experiment_root: Path
    run_dir: Path
    status: str                    # "new" | "resume" | "finished"


def default_exp_name(dataset: str, source: str | None, seed: int) -> str:
    """DATASET_CHECKPOINT-STEM_seedSEED (the architecture's name when training from scratch); a data.yaml given
    as --dset is named by its folder."""
    if is_detection_dataset(dataset) and dataset != "yolo":
        dataset = Path(dataset).parent.name or Path(dataset).stem
    return f"{dataset}_{Path(source).stem if source else 'model'}_seed{seed}"


def plan_run(opts: FullOptions) -> Plan:
    trainer = load_config(opts.trainer_config_path, TrainerConfig)
    transfer = load_config(opts.transfer_config_path, TransferConfig) if opts.transfer_config_path else TransferConfig()
    batch_size = opts.batch_size or trainer.batch_size
    device, gpus = pick_device(cpu=opts.cpu, gpus=opts.gpus)
    dist_info = init_distributed(use_cuda=device.type == "cuda")
    if dist_info.enabled:
        batch_size = per_rank_batch_size(batch_size, dist_info)
        if device.type == "cuda":
            device, gpus = torch.device(f"cuda:{dist_info.local_rank}"), [dist_info.local_rank]
    experiment_root, run_dir = Path(opts.experiment_root_path), run_dir_of(opts)
    if dist_info.is_main:
        check_results_table(experiment_root, detection=is_detection_dataset(opts.dataset))
    status = "new" if opts.eval_only else prepare_run_dir(run_dir, resume=opts.resume)
    barrier(dist_info)  # every rank has decided new/resume/finished before the main one writes
    return Plan(trainer=trainer, transfer=transfer, epochs=opts.epochs or trainer.epochs, batch_size=batch_size,
                lr=opts.lr or trainer.optimizer.lr, device=device, gpus=gpus, dist=dist_info,
                experiment_root=experiment_root, run_dir=run_dir, status=status)


def load_data(upstream: Upstream, *, dataset: str, dataset_path: str | None, image_size: int | None,
              interpolation: str | None, max_train_samples: int | None, seed: int,
              mosaic: float = 0.0) -> tuple[DatasetSplits, InputSettings]:
    """The downstream splits, prepared as the upstream expects (its resize and normalisation unless overridden)."""
    detector = model_task(upstream.arch) == "detection"
    if detector != is_detection_dataset(dataset):
        raise UserError(f"--dset {dataset!r} is a {'detection' if not detector else 'classification'} dataset but "
                        f"{upstream.arch} is a {'detector' if detector else 'classifier'}; detectors (yolov5*) train "
                        "on YOLO data: --dset yolo --dset_path data.yaml")
    inputs = InputSettings(image_size=image_size or upstream.model.default_input_size,
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
    if getattr(model, "task", "classification") == "detection":
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
                      precision=precision,
                      frozen_modules=frozen, task=task)
    if plan.dist.is_main:
        manager.policies.append(CheckpointSaver(plan.run_dir / "checkpoint.pt", manager.training_state))
    if plan.status == "resume":
        manager.restore(torch.load(plan.run_dir / "checkpoint.pt", map_location=state.device, weights_only=True))
        log.info("resuming %s at epoch %d (step %d)", plan.run_dir, state.epoch, state.step)
    if precision == "fp16" and state.device.type != "cuda":
        log.warning("--precision fp16 needs CUDA; training in fp32 on %s (bf16 runs on CPUs)", state.device)
    return manager.fit()


def run_dir_of(opts: FullOptions) -> Path:
    return run_dir_for(opts.experiment_root_path,
                       opts.exp_name or default_exp_name(opts.dataset, opts.from_checkpoint_path or opts.arch, opts.seed))


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
                             image_size=opts.image_size, interpolation=opts.interpolation,
                             max_train_samples=opts.max_train_samples, seed=opts.seed,
                             mosaic=0.0 if opts.eval_only else plan.trainer.mosaic)
    if plan.trainer.mosaic and not opts.eval_only and model_task(upstream.arch) != "detection":
        raise UserError(f"{opts.trainer_config_path}: 'mosaic: {plan.trainer.mosaic}' is detection augmentation and "
                        f"{upstream.arch} is a classifier; remove the key (or set it to 0)")
    if opts.eval_only:
        return evaluate_only(upstream, data, opts=opts, device=plan.device, run_dir=plan.run_dir,
                             task=task_for(upstream.model, image_size=inputs.image_size, label_smoothing=0.0))
    seed_everything(opts.seed)
    masks, frozen = prepare_model_(upstream, num_classes=data.num_classes, transfer=plan.transfer, device=plan.device)
    loaded_sparsity = measured_sparsity(upstream.model)
    loaders = make_loaders(data, batch_size=plan.batch_size, test_batch_size=plan.trainer.test_batch_size or
                           plan.batch_size, workers=opts.workers, device=plan.device, dist=plan.dist)
    schedule, epochs = training_schedule(opts, plan, model=upstream.model, masks=masks,
                                         steps_per_epoch=len(loaders[0]), embedded_recipe=upstream.recipe)
    state = train_state(upstream.model, plan, epochs=epochs, steps_per_epoch=len(loaders[0]), seed=opts.seed,
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
    removed = [n for p in schedule if isinstance(p, LayerPruningModifier) for n in p.removed]
    return finish(opts, plan, upstream=upstream, masks=final_masks, metrics=metrics, inputs=inputs, label=label,
                  extra={"classes": data.classes, **({"removed_layers": removed} if removed else {})},
                  loaded_sparsity=loaded_sparsity, epochs=epochs, git_commit=resolved["git_commit"],
                  dataset_name=data.spec.name if data.layout == "yolo" else opts.dataset)


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
    return [LRSchedulePolicy(base_lr=plan.lr, cfg=plan.trainer.schedule), FixedMaskPolicy(masks)], plan.epochs


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
    optimizer = build_optimizer(model, plan.trainer.optimizer.model_copy(update={"lr": plan.lr}))
    if plan.dist.enabled:
        forward_model = nn.parallel.DistributedDataParallel(model, device_ids=plan.gpus or None)
    else:
        forward_model = nn.DataParallel(model, device_ids=plan.gpus) if len(plan.gpus) > 1 else model
    if compile_model:
        forward_model = torch.compile(forward_model)
    return TrainState(model=model, forward_model=forward_model, optimizer=optimizer, device=plan.device,
                      steps_per_epoch=steps_per_epoch, num_epochs=epochs, seed=seed, run_dir=plan.run_dir)


def resolved_config(opts: FullOptions, plan: Plan, *, upstream: Upstream, data: DatasetSplits, inputs: InputSettings,
                    state: TrainState, loaded_sparsity: float) -> dict[str, Any]:
    """config.yaml: the options, configs and derived values the run used, and where the code stood."""
    return {
        "options": opts.model_dump(exclude={"resume", "progress"}), "trainer": plan.trainer.model_dump(),
        "transfer": plan.transfer.model_dump(), "checkpoint": upstream.describe(),
        "dataset": {"name": data.spec.name, "layout": data.layout, "num_classes": data.num_classes,
                    "train_size": len(data.train), "test_size": len(data.test), "image_size": inputs.image_size,
                    "content": data_content(data)},
        "derived": {"epochs": state.num_epochs, "batch_size": plan.batch_size, "lr": plan.lr,
                    "device": str(plan.device), "steps_per_epoch": state.steps_per_epoch,
                    "loaded_sparsity": loaded_sparsity},
        **environment_info(),
    }


def data_content(data: DatasetSplits) -> dict[str, str | None]:
    """Each split's content fingerprint (utils.data.fingerprint), as config.yaml records it."""
    return {"train": content_fingerprint(data.train), "test": content_fingerprint(data.test)}


def check_sparsity(model: nn.Module, masks: dict[str, torch.Tensor], *, recipe: bool,
                   loaded_sparsity: float) -> dict[str, torch.Tensor]:
    """The masks the final model has: a recipe decides them (recorded as they are, the classifier's too when
    the recipe pruned it); fixed masks must hold."""
    if recipe:
        return masks_from_zeros({n: p for n, p in prunable_parameters(model).items() if bool((p == 0).any())})
    final = measured_sparsity(model)
    if final != loaded_sparsity:
        raise UserError(f"final sparsity {final:.6f} differs from the loaded {loaded_sparsity:.6f}: "
                        "the mask was not kept; this is a bug, please report it")
    return masks


def run_precision(requested: str, device: torch.device) -> str:
    """The precision a run trains in: as asked, or for 'auto' the fastest this device runs (probed once)."""
    if requested != "auto":
        return requested
    if device not in _PROBED:
        _PROBED[device] = fastest_precision(device)
        log.info("--precision auto: %s on %s", _PROBED[device], device)
    return _PROBED[device]


_PROBED: dict[torch.device, str] = {}


def task_columns(metrics: dict[str, Any]) -> dict[str, Any]:
    """results.csv's task column, and a detector's mAP columns (empty for a classifier)."""
    if "map" not in metrics:
        return {"task": "classification", "map": "", "map50": ""}
    return {"task": "detection", "map": metrics["map"], "map50": metrics["map50"], "map75": metrics["map75"],
            "ap_per_class": metrics.get("ap_per_class", {})}


def finish(opts: FullOptions, plan: Plan, *, upstream: Upstream, masks: dict[str, torch.Tensor],
           metrics: dict[str, Any], inputs: InputSettings, label: str, extra: dict[str, Any],
           loaded_sparsity: float, epochs: int, git_commit: str, dataset_name: str) -> RunResult:
    """The main process saves model.pt and records the result; the others only report theirs."""
    model, final_sparsity = upstream.model, measured_sparsity(upstream.model)
    if not plan.dist.is_main:
        barrier(plan.dist)
        shutdown(plan.dist)
        record = {"val_acc": metrics.get("test_acc", ""), **task_columns(metrics), "measured_sparsity": final_sparsity,
                  "rank": plan.dist.rank}
        return RunResult(record=record, run_dir=plan.run_dir, input=inputs)
    extra = {"method": label, "input_size": inputs.image_size, **extra}
    if qat_modules(model):
        extra["quantization"] = qat_state(model)
    save_native_checkpoint(plan.run_dir / "model.pt", model, arch=upstream.arch, arch_kwargs=upstream.arch_kwargs,
                           masks=masks, normalization=upstream.normalization, interpolation=inputs.interpolation,
                           extra=extra)
    sparsity = final_sparsity if opts.recipe else loaded_sparsity
    record = {
        "dset": dataset_name, "model": label,
        "sparsity": opts.sparsity_label if opts.sparsity_label is not None else round(sparsity, 2),
        "seed": opts.seed, "val_acc": metrics.get("test_acc", ""), "test_loss": metrics["test_loss"],
        "precision": run_precision(opts.precision, plan.device),
        **task_columns(metrics),
        "finetuning": "full", "arch": upstream.arch, "checkpoint": opts.from_checkpoint_path or "",
        "flavour": upstream.flavour or "", "recipe": opts.recipe or "", "solver": "", "lr": plan.lr,
        "epochs": epochs, "batch_size": plan.batch_size, "measured_sparsity": final_sparsity,
        "run_dir": str(plan.run_dir), "git_commit": git_commit, "finished_at": now_iso(),
        "per_layer_sparsity": layer_sparsity(masks), "loaded_sparsity": loaded_sparsity,
        "input": asdict(inputs),
    }
    record_result(plan.run_dir, plan.experiment_root, record)
    barrier(plan.dist)
    shutdown(plan.dist)
    return RunResult(record=record, run_dir=plan.run_dir, input=inputs)
