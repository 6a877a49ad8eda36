"""Full fine-tuning: one run from options to result row. main.py calls `run_full_finetuning`."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import build_model
from policies.base import TrainState
from policies.loggers import CheckpointSaver, MetricsLogger, ProgressBar, WandbLogger
from policies.manager import Manager, evaluate, seed_everything
from policies.masking import FixedMaskPolicy
from policies.modifiers.runs import build_run_recipe
from policies.quantization import qat_modules, qat_state
from policies.trainer import LRSchedulePolicy, TrainerConfig, build_optimizer
from utils.checkpoints import save_native_checkpoint
from utils.config import load_config
from utils.datasets import load_datasets
from utils.distributed import DistInfo, barrier, init_distributed, shutdown
from utils.errors import UserError
from utils.experiment import (RunOptions, TransferConfig, load_upstream, default_exp_name, freeze_,
                              make_loaders, pick_device, reinitialize_unloaded_)
from utils.io import atomic_write_json
from utils.masks import global_sparsity, layer_sparsity, masks_from_zeros, prunable_parameters
from utils.run import (environment_info, finished_result, now_iso, prepare_run_dir, record_result,
                       write_run_config)

log = logging.getLogger(__name__)


def sparse_layers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Prunable weights (classifier excluded) that hold at least one zero."""
    params = prunable_parameters(model, exclude_prefixes=[model.classifier_name])
    return {n: p for n, p in params.items() if bool((p == 0).any())}


def measured_sparsity(model: nn.Module) -> float:
    return global_sparsity(prunable_parameters(model, exclude_prefixes=[model.classifier_name]))


def per_rank_batch_size(batch_size: int, dist_info: DistInfo) -> int:
    """The configured batch is the global one: each of N processes takes batch_size / N."""
    if batch_size % dist_info.world_size:
        raise UserError(f"batch size {batch_size} is not divisible by the {dist_info.world_size} processes; "
                        "pick a multiple of --nproc_per_node")
    return batch_size // dist_info.world_size


def run_full_finetuning(opts: RunOptions) -> dict[str, Any]:
    """Fine-tune every (unfrozen) weight of a sparse checkpoint, keeping its zeros; returns the result."""
    trainer = load_config(opts.config_path, TrainerConfig)
    transfer = (load_config(opts.transfer_config_path, TransferConfig) if opts.transfer_config_path
                else TransferConfig())
    epochs = opts.epochs or trainer.epochs
    batch_size = opts.batch_size or trainer.batch_size
    base_lr = opts.lr or trainer.optimizer.lr
    device, gpus = pick_device(opts)
    dist_info = init_distributed(use_cuda=device.type == "cuda")
    if dist_info.enabled:
        batch_size = per_rank_batch_size(batch_size, dist_info)
        if device.type == "cuda":
            device, gpus = torch.device(f"cuda:{dist_info.local_rank}"), [dist_info.local_rank]
    experiment_root = Path(opts.experiment_root_path)
    run_dir = experiment_root / (opts.exp_name or default_exp_name(opts))

    status = "new" if opts.eval_only else prepare_run_dir(run_dir, resume=opts.resume)
    barrier(dist_info)  # every rank has decided new/resume/finished before the main one writes
    if status == "finished":
        log.info("%s is already finished; reporting its result", run_dir)
        return finished_result(run_dir, experiment_root)

    seed_everything(opts.manual_seed)
    model, info = load_upstream(opts)
    normalization = info["normalization"]
    mean, std = (None, None) if normalization == "dataset" else (normalization["mean"], normalization["std"])
    image_size = opts.image_size or model.default_input_size
    data = load_datasets(opts.dset, opts.dset_path, image_size=image_size,
                         interpolation=opts.interpolation or info["interpolation"], mean=mean, std=std,
                         max_train_samples=opts.max_train_samples, seed=opts.manual_seed)
    if opts.eval_only:
        return evaluate_only(model, data, opts=opts, device=device, run_dir=run_dir)

    seed_everything(opts.manual_seed)
    model.reset_classifier(data.num_classes)
    if transfer.load_modules is not None:
        fresh = build_model(info["arch"], num_classes=data.num_classes, **info["arch_kwargs"])
        reset = reinitialize_unloaded_(model, fresh, transfer.load_modules, model.classifier_name)
        log.info("re-initialised %d tensors outside load_modules", len(reset))
    # The mask held during fine-tuning is the loaded zeros (the loader checked they agree with any
    # stored mask), so the sparsity pattern is kept exactly, zero for zero.
    masks = masks_from_zeros(sparse_layers(model))
    loaded_sparsity = measured_sparsity(model)
    frozen = freeze_(model, transfer)
    model.to(device)

    train_loader, test_loader = make_loaders(data, batch_size=batch_size,
                                             test_batch_size=trainer.test_batch_size or batch_size,
                                             workers=opts.workers, device=device, dist=dist_info)
    recipe_policies = None
    if opts.recipe:  # the recipe replaces the trainer's LR schedule and the fixed masks, and sets the epochs
        recipe_policies, epochs, _ = build_run_recipe(opts.recipe, opts.recipe_args, model=model,
                                                      steps_per_epoch=len(train_loader), run_dir=run_dir,
                                                      resuming=status == "resume", epochs_flag=opts.epochs)
    optimizer = build_optimizer(model, trainer.optimizer.model_copy(update={"lr": base_lr}))
    if dist_info.enabled:
        forward_model = nn.parallel.DistributedDataParallel(model, device_ids=gpus or None)
    else:
        forward_model = nn.DataParallel(model, device_ids=gpus) if len(gpus) > 1 else model
    state = TrainState(model=model, forward_model=forward_model, optimizer=optimizer, device=device,
                       steps_per_epoch=len(train_loader), num_epochs=epochs, seed=opts.manual_seed,
                       run_dir=run_dir)
    resolved = {
        "options": opts.model_dump(exclude={"resume", "progress"}), "trainer": trainer.model_dump(), "transfer": transfer.model_dump(),
        "checkpoint": info, "dataset": {"name": data.spec.name, "layout": data.layout,
                                        "num_classes": data.num_classes, "train_size": len(data.train),
                                        "test_size": len(data.test), "image_size": image_size},
        "derived": {"epochs": epochs, "batch_size": batch_size, "lr": base_lr, "device": str(device),
                    "steps_per_epoch": state.steps_per_epoch, "loaded_sparsity": loaded_sparsity},
        **environment_info(),
    }
    if dist_info.is_main:
        write_run_config(run_dir, resolved, check_existing=status == "resume")

    schedule = recipe_policies or [LRSchedulePolicy(base_lr=base_lr, cfg=trainer.schedule), FixedMaskPolicy(masks)]
    # Only the main process observes and writes; every rank runs the same schedule and masks.
    policies = [*schedule, MetricsLogger(run_dir / "metrics.jsonl"),
                ProgressBar(enabled=opts.progress, desc=run_dir.name)] if dist_info.is_main else [*schedule]
    if opts.use_wandb and dist_info.is_main:
        policies.append(WandbLogger(project=opts.wandb_project, group=opts.wandb_group,
                                    run_name=opts.wandb_name or run_dir.name, config=resolved, run_dir=run_dir))
    manager = Manager(state=state, policies=policies, train_loader=train_loader, test_loader=test_loader,
                      label_smoothing=trainer.label_smoothing, eval_every_epochs=trainer.eval_every_epochs,
                      grad_clip_norm=trainer.grad_clip_norm, amp=opts.fp16, frozen_modules=frozen)
    if dist_info.is_main:
        manager.policies.append(CheckpointSaver(run_dir / "checkpoint.pt", manager.training_state))
    if status == "resume":
        manager.restore(torch.load(run_dir / "checkpoint.pt", map_location=device, weights_only=True))
        log.info("resuming %s at epoch %d (step %d)", run_dir, state.epoch, state.step)
    if opts.fp16 and device.type != "cuda":
        log.warning("--fp16 needs CUDA; training in fp32 on %s", device)

    metrics = manager.fit()
    final_sparsity = measured_sparsity(model)
    if recipe_policies is not None:  # the recipe decides the sparsity; record what it produced
        masks = masks_from_zeros(sparse_layers(model))
    elif final_sparsity != loaded_sparsity:
        raise UserError(f"final sparsity {final_sparsity:.6f} differs from the loaded {loaded_sparsity:.6f}: "
                        "the mask was not kept; this is a bug, please report it")
    if not dist_info.is_main:
        barrier(dist_info)
        shutdown(dist_info)
        return {"val_acc": metrics["test_acc"], "measured_sparsity": final_sparsity, "rank": dist_info.rank}
    label = opts.model_label or info["method"] or info["flavour"] or "Dense"
    extra = {"method": label, "input_size": image_size}
    if qat_modules(model):
        extra["quantization"] = qat_state(model)
    save_native_checkpoint(run_dir / "model.pt", model, arch=info["arch"], arch_kwargs=info["arch_kwargs"],
                           masks=masks, normalization=normalization, interpolation=info["interpolation"],
                           extra=extra)
    result = {
        "dset": opts.dset, "model": label,
        "sparsity": opts.sparsity_label if opts.sparsity_label is not None
        else round(final_sparsity if recipe_policies is not None else loaded_sparsity, 2),
        "seed": opts.manual_seed, "val_acc": metrics["test_acc"], "test_loss": metrics["test_loss"],
        "finetuning": "full", "arch": info["arch"], "checkpoint": opts.from_checkpoint_path or "",
        "flavour": info["flavour"] or "", "recipe": opts.recipe or "", "solver": "", "lr": base_lr, "epochs": epochs,
        "batch_size": batch_size, "measured_sparsity": final_sparsity, "run_dir": str(run_dir),
        "git_commit": resolved["git_commit"], "finished_at": now_iso(),
        "per_layer_sparsity": layer_sparsity(masks),
    }
    record_result(run_dir, experiment_root, result)
    barrier(dist_info)
    shutdown(dist_info)
    return result


def evaluate_only(model: nn.Module, data, *, opts: RunOptions, device: torch.device, run_dir: Path) -> dict:
    """--eval_only: score a model that already has its downstream head on the test split."""
    out_features = getattr(getattr(model, model.classifier_name), "out_features", None)
    if out_features != data.num_classes:
        raise UserError(f"{opts.from_checkpoint_path}: classifier has {out_features} outputs but dataset "
                        f"{opts.dset!r} has {data.num_classes} classes; --eval_only needs a fine-tuned checkpoint")
    model.to(device)
    _, test_loader = make_loaders(data, batch_size=opts.batch_size or 64, test_batch_size=opts.batch_size or 64,
                                  workers=opts.workers, device=device)
    metrics = evaluate(model, test_loader, device)
    result = {"dset": opts.dset, "checkpoint": opts.from_checkpoint_path, "val_acc": metrics["test_acc"],
              "test_loss": metrics["test_loss"], "measured_sparsity": measured_sparsity(model)}
    atomic_write_json(run_dir / "eval_result.json", result)
    return result
