"""Full fine-tuning: the run skeleton's steps (utils.runs.skeleton) for it (main.py calls `run_full_finetuning`).

    plan (utils.runs.plan)  ->  upstream + data (utils.runs.downstream)  ->  prepare the model, policies and fit
    (utils.runs.training)  ->  record (utils.runs.record);  --eval_only: the same up to the data, then a score
"""
from __future__ import annotations

import logging

import torch

from utils.data import DatasetSplits
from utils.runs.downstream import (
    check_mosaic,
    fit_anchors_,
    load_data,
    prepare_model_,
    run_loaders,
    task_for,
)
from utils.runs.evaluate import evaluate_only
from utils.runs.kinds import InputSettings, RunResult
from utils.runs.options import FullOptions
from utils.runs.plan import plan_run, run_dir_of
from utils.runs.record import check_sparsity, finish, write_resolved_config
from utils.runs.setup import Upstream, load_upstream
from utils.runs.skeleton import RunSteps, run_steps
from utils.runs.training import (
    fit as train,
)
from utils.runs.training import (
    main_process_observers,
    run_context,
    run_facts,
    run_precision,
    train_state,
    training_schedule,
)
from utils.seed import seed_everything

__all__ = ["run_full_finetuning"]

log = logging.getLogger(__name__)


def run_full_finetuning(opts: FullOptions) -> RunResult:
    """Fine-tune every (unfrozen) weight of a sparse checkpoint, keeping its zeros; returns the result
    (--eval_only: score a fine-tuned model instead)."""
    return run_steps((EvalOnlySteps if opts.eval_only else FullSteps)(opts, run_dir_of(opts)))


class FullSteps(RunSteps):
    opts: FullOptions

    def plan(self) -> str:
        self.plan_ = plan_run(self.opts)
        return self.plan_.status

    def recorded_settings(self) -> dict:
        return {"options": self.opts.model_dump(exclude={"resume", "progress"}),
                "trainer": self.plan_.trainer.model_dump()}

    def upstream(self) -> Upstream:
        opts = self.opts
        return load_upstream(checkpoint_path=opts.from_checkpoint_path, flavour=opts.checkpoint_flavour,
                             arch=opts.arch, keep_classifier=opts.eval_only)

    def data(self, upstream: Upstream) -> tuple[DatasetSplits, InputSettings]:
        opts = self.opts
        return load_data(upstream, dataset=opts.dataset, dataset_path=opts.dataset_path,
                         checkpoint=opts.from_checkpoint_path, image_size=opts.image_size,
                         interpolation=opts.interpolation, max_train_samples=opts.max_train_samples, seed=opts.seed,
                         mosaic=0.0 if opts.eval_only else self.plan_.trainer.mosaic)

    def fit(self, upstream: Upstream, data: DatasetSplits, inputs: InputSettings) -> dict:
        """Head, masks and frozen parts; anchors; the schedule and policies; the training; the checks after it."""
        opts, plan = self.opts, self.plan_
        check_mosaic(plan.trainer.mosaic, arch=upstream.arch, trainer_config=opts.trainer_config_path)
        seed_everything(opts.seed)
        masks, frozen, loaded_sparsity = prepare_model_(upstream, num_classes=data.num_classes,
                                                        transfer=plan.transfer, device=plan.device)
        if not opts.noautoanchor and plan.status != "resume":      # a resumed run has its anchors
            fit_anchors_(upstream, data, image_size=inputs.image_size, seed=opts.seed)
        loaders, steps_per_epoch = run_loaders(data, plan, workers=opts.workers)
        schedule, epochs = training_schedule(opts, plan, model=upstream.model, masks=masks,
                                             steps_per_epoch=steps_per_epoch, embedded_recipe=upstream.recipe)
        task = task_for(upstream.model, image_size=inputs.image_size, label_smoothing=plan.trainer.label_smoothing)
        state = train_state(upstream.model, plan, task=task, epochs=epochs, steps_per_epoch=steps_per_epoch,
                            seed=opts.seed, compile_model=opts.compile)
        resolved = write_resolved_config(opts, plan, upstream=upstream, data=data, inputs=inputs, state=state,
                                         loaded_sparsity=loaded_sparsity)
        if opts.channels_last:
            upstream.model.to(memory_format=torch.channels_last)
            task.channels_last = True
        precision = run_precision(opts.precision, plan.device)
        metrics, facts = train(state, schedule + main_process_observers(opts, plan, resolved), plan=plan,
                               loaders=loaders, precision=precision, frozen=frozen, task=task,
                               context=run_context(opts, upstream.model))
        masks = check_sparsity(upstream.model, masks, recipe=opts.recipe is not None, loaded_sparsity=loaded_sparsity)
        said = run_facts(opts, plan, facts, upstream.method, loaded_sparsity=loaded_sparsity)
        return {"masks": masks, "metrics": metrics, "said": said, "epochs": epochs, "precision": precision,
                "loaded_sparsity": loaded_sparsity, "git_commit": resolved["git_commit"]}

    def record(self, upstream: Upstream, data: DatasetSplits, inputs: InputSettings, fitted: dict) -> RunResult:
        said, removed = fitted["said"], fitted["said"]["removed_layers"]
        return finish(self.opts, self.plan_, upstream=upstream, masks=fitted["masks"], metrics=fitted["metrics"],
                      inputs=inputs, label=said["label"],
                      extra={"classes": data.classes, **({"removed_layers": removed} if removed else {})},
                      loaded_sparsity=fitted["loaded_sparsity"], epochs=fitted["epochs"],
                      git_commit=fitted["git_commit"], dataset_name=self.opts.dataset_label(),
                      precision=fitted["precision"], hyper=said["hyper"])


class EvalOnlySteps(FullSteps):
    """--eval_only: a fine-tuned model (with its downstream head) scored on the test split; nothing trains."""

    def fit(self, upstream: Upstream, data: DatasetSplits, inputs: InputSettings) -> RunResult:
        return evaluate_only(upstream, data, opts=self.opts, device=self.plan_.device, run_dir=self.plan_.run_dir,
                             task=task_for(upstream.model, image_size=inputs.image_size, label_smoothing=0.0))

    def record(self, upstream: Upstream, data: DatasetSplits, inputs: InputSettings, fitted: RunResult) -> RunResult:
        return fitted             # evaluate_only wrote eval_result.json
