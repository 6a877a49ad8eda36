"""The last stage of a full fine-tuning run: what it recorded (config.yaml, model.pt, result.json and its
results.csv row), and the checks on the way."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from policies.base import TrainState
from policies.qat.modules import qat_modules, qat_state
from utils.checkpoints import save_native_checkpoint
from utils.data import DatasetSplits, content_fingerprint
from utils.distributed import barrier, shutdown
from utils.errors import UserError
from utils.runs.dirs import environment_info, now_iso, record_result, write_run_config
from utils.runs.kinds import InputSettings, ResultRow, RunResult
from utils.runs.options import FullOptions
from utils.runs.plan import Plan
from utils.runs.setup import Upstream
from utils.sparsity import layer_sparsity, masks_from_zeros, measured_sparsity, prunable_parameters


def resolved_config(opts: FullOptions, plan: Plan, *, upstream: Upstream, data: DatasetSplits, inputs: InputSettings,
                    state: TrainState, loaded_sparsity: float) -> dict[str, Any]:
    """config.yaml: the options, configs and derived values the run used, and where the code stood."""
    return {
        "options": opts.model_dump(exclude={"resume", "progress"}), "trainer": plan.trainer.model_dump(),
        "transfer": plan.transfer.model_dump(), "checkpoint": upstream.describe(),
        "dataset": {"name": data.spec.name, "layout": data.layout, "num_classes": data.num_classes,
                    "train_size": len(data.train), "test_size": len(data.test), "image_size": inputs.image_size,
                    "content": data_content(data)},
        "derived": {"epochs": state.num_epochs, "batch_size": plan.batch_size, "accumulate_steps": plan.accumulate,
                    # a recipe's LR and weight-decay modifiers decide them: what they gave is in result.json
                    "weight_decay": "recipe" if opts.recipe else plan.weight_decay,
                    "lr": "recipe" if opts.recipe else plan.lr,
                    "device": str(plan.device), "steps_per_epoch": state.steps_per_epoch,
                    "loaded_sparsity": loaded_sparsity},
        **environment_info(),
    }


def write_resolved_config(opts: FullOptions, plan: Plan, **what: Any) -> dict[str, Any]:
    """The run's config.yaml written (by the main process; a resumed run's is checked to be the same), and returned."""
    resolved = resolved_config(opts, plan, **what)
    if plan.dist.is_main:
        write_run_config(plan.run_dir, resolved, check_existing=plan.status == "resume")
    return resolved


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


def task_columns(metrics: dict[str, Any]) -> dict[str, Any]:
    """results.csv's task column, and a detector's mAP columns (empty for a classifier)."""
    if "map" not in metrics:
        return {"task": "classification", "map": "", "map50": ""}
    return {"task": "detection", "map": metrics["map"], "map50": metrics["map50"], "map75": metrics["map75"],
            "ap_per_class": metrics.get("ap_per_class", {})}


def finish(opts: FullOptions, plan: Plan, *, upstream: Upstream, masks: dict[str, torch.Tensor],
           metrics: dict[str, Any], inputs: InputSettings, label: str, extra: dict[str, Any],
           loaded_sparsity: float, epochs: int, git_commit: str, dataset_name: str, precision: str,
           hyper: dict[str, float]) -> RunResult:
    """The main process saves model.pt and records the result (`hyper`: the LR, first and peak, and weight decay
    that drove training; results.csv's lr is the peak); the others only report theirs."""
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
    scores = task_columns(metrics)
    record = ResultRow(
        dset=dataset_name, model=label,
        sparsity=opts.sparsity_label if opts.sparsity_label is not None else round(sparsity, 2),
        seed=opts.seed, val_acc=metrics.get("test_acc", ""), finetuning="full", arch=upstream.arch,
        checkpoint=opts.from_checkpoint_path or "", flavour=upstream.flavour or "", recipe=opts.recipe or "",
        solver="", lr=hyper["lr_peak"], epochs=epochs, batch_size=plan.batch_size, measured_sparsity=final_sparsity,
        run_dir=str(plan.run_dir), git_commit=git_commit, finished_at=now_iso(), task=scores.pop("task"),
        map=scores.pop("map"), map50=scores.pop("map50"), precision=precision,
        details={"test_loss": metrics["test_loss"], **scores, "lr_initial": hyper["lr_initial"],
                 "weight_decay": hyper["weight_decay"], "per_layer_sparsity": layer_sparsity(masks),
                 "loaded_sparsity": loaded_sparsity, "input": asdict(inputs)}).record()
    record_result(plan.run_dir, plan.experiment_root, record)
    barrier(plan.dist)
    shutdown(plan.dist)
    return RunResult(record=record, run_dir=plan.run_dir, input=inputs)
