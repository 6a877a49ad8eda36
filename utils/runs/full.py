"""Full fine-tuning: one run from options to result, in named stages (main.py calls `run_full_finetuning`).

    plan (utils.runs.plan)  ->  upstream + data (utils.runs.downstream)  ->  prepare the model  ->  policies and fit
    (utils.runs.training)  ->  record (utils.runs.record)
"""
from __future__ import annotations

import logging

import torch

from utils.checkpoints import check_dense_label
from utils.runs.dirs import already_finished, run_lock, write_run_config
from utils.runs.downstream import (
    check_mosaic,
    fit_anchors_,
    load_data,
    prepare_model_,
    run_loaders,
    task_for,
)
from utils.runs.evaluate import evaluate_only
from utils.runs.kinds import RunResult
from utils.runs.options import FullOptions
from utils.runs.plan import plan_run, run_dir_of
from utils.runs.record import check_sparsity, finish, resolved_config
from utils.runs.setup import load_upstream
from utils.runs.training import (
    fit,
    main_process_observers,
    run_context,
    run_facts,
    run_precision,
    train_state,
    training_schedule,
)
from utils.seed import seed_everything
from utils.sparsity import measured_sparsity

__all__ = ["run_full_finetuning"]

log = logging.getLogger(__name__)


def run_full_finetuning(opts: FullOptions) -> RunResult:
    """Fine-tune every (unfrozen) weight of a sparse checkpoint, keeping its zeros; returns the result."""
    with run_lock(run_dir_of(opts)):
        return fine_tune(opts)


def fine_tune(opts: FullOptions) -> RunResult:
    """The run itself, with the run directory held: plan, load, prepare, fit, record."""
    plan = plan_run(opts)
    if plan.status == "finished":
        return already_finished(plan.run_dir, plan.experiment_root,
                                {"options": opts.model_dump(exclude={"resume", "progress"}),
                                 "trainer": plan.trainer.model_dump()})
    seed_everything(opts.seed)
    upstream = load_upstream(checkpoint_path=opts.from_checkpoint_path, flavour=opts.checkpoint_flavour,
                             arch=opts.arch, keep_classifier=opts.eval_only)
    data, inputs = load_data(upstream, dataset=opts.dataset, dataset_path=opts.dataset_path,
                             checkpoint=opts.from_checkpoint_path,
                             image_size=opts.image_size, interpolation=opts.interpolation,
                             max_train_samples=opts.max_train_samples, seed=opts.seed,
                             mosaic=0.0 if opts.eval_only else plan.trainer.mosaic)
    if opts.eval_only:
        return evaluate_only(upstream, data, opts=opts, device=plan.device, run_dir=plan.run_dir,
                             task=task_for(upstream.model, image_size=inputs.image_size, label_smoothing=0.0))
    check_mosaic(plan.trainer.mosaic, arch=upstream.arch, trainer_config=opts.trainer_config_path)
    seed_everything(opts.seed)
    masks, frozen = prepare_model_(upstream, num_classes=data.num_classes, transfer=plan.transfer, device=plan.device)
    if not opts.noautoanchor and plan.status != "resume":      # a resumed run has its anchors
        fit_anchors_(upstream, data, image_size=inputs.image_size, seed=opts.seed)
    loaded_sparsity = measured_sparsity(upstream.model)
    loaders, steps_per_epoch = run_loaders(data, plan, workers=opts.workers)
    schedule, epochs = training_schedule(opts, plan, model=upstream.model, masks=masks,
                                         steps_per_epoch=steps_per_epoch, embedded_recipe=upstream.recipe)
    task = task_for(upstream.model, image_size=inputs.image_size, label_smoothing=plan.trainer.label_smoothing)
    state = train_state(upstream.model, plan, task=task, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        seed=opts.seed, compile_model=opts.compile)
    resolved = resolved_config(opts, plan, upstream=upstream, data=data, inputs=inputs, state=state,
                               loaded_sparsity=loaded_sparsity)
    if plan.dist.is_main:
        write_run_config(plan.run_dir, resolved, check_existing=plan.status == "resume")
    if opts.channels_last:
        upstream.model.to(memory_format=torch.channels_last)
        task.channels_last = True
    precision = run_precision(opts.precision, plan.device)
    metrics, facts = fit(state, schedule + main_process_observers(opts, plan, resolved), plan=plan,
                         loaders=loaders, precision=precision, frozen=frozen, task=task,
                         context=run_context(opts, upstream.model))
    masks = check_sparsity(upstream.model, masks, recipe=opts.recipe is not None, loaded_sparsity=loaded_sparsity)
    said = run_facts(opts, plan, facts, upstream.method)
    if said["label"] == upstream.method and opts.from_checkpoint_path:
        check_dense_label(said["label"], loaded_sparsity, opts.from_checkpoint_path)
    removed = said["removed_layers"]
    return finish(opts, plan, upstream=upstream, masks=masks, metrics=metrics, inputs=inputs, label=said["label"],
                  extra={"classes": data.classes, **({"removed_layers": removed} if removed else {})},
                  loaded_sparsity=loaded_sparsity, epochs=epochs, git_commit=resolved["git_commit"],
                  dataset_name=opts.dataset_label(), precision=precision, hyper=said["hyper"])
