"""Linear fine-tuning: one run from options to result. finetune_pre_extracted_features.py calls
`run_linear_finetuning`.

The backbone is frozen; its pooled features are extracted once per (checkpoint, dataset split,
transform) into the features cache, and only a linear classifier is fitted (utils.linear.solvers).
With `augment`, training features come from freshly augmented images every epoch instead (the
study's DeepSparse variant; SGD only, nothing cached for training).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from policies.trainer import TrainerConfig
from utils.checkpoints import check_dense_label
from utils.config import load_config
from utils.data import IMAGENET_MEAN, IMAGENET_STD, DatasetSplits, content_fingerprint, load_datasets
from utils.data.seeded import SampleSeeded
from utils.errors import UserError
from utils.io import append_jsonl, atomic_torch_save
from utils.linear import (
    BACKENDS,
    SOLVERS,
    FeatureSet,
    LinearClassifier,
    LinearProbeConfig,
    SolverSettings,
    build_backend,
    cached_features,
    describe_split,
    extract_features,
    fit_sgd_epochs,
    score,
)
from utils.onnx.engines import missing
from utils.runs.dirs import (
    check_results_table,
    environment_info,
    now_iso,
    prepare_run_dir,
    record_result,
    run_dir_for,
    write_run_config,
)
from utils.runs.kinds import InputSettings, ResultRow, RunResult
from utils.runs.options import LinearOptions
from utils.runs.plan import default_exp_name
from utils.runs.setup import Upstream, load_upstream, loader_workers, pick_device
from utils.runs.skeleton import RunSteps, run_steps
from utils.seed import epoch_seed
from utils.sparsity import layer_sparsity, masks_from_zeros, measured_sparsity, sparse_layers

log = logging.getLogger(__name__)


def run_name(opts: LinearOptions) -> str:
    """The run's default name: full fine-tuning's, with the probe's variant (linear-SOLVER[-aug][-BACKEND])."""
    variant = opts.solver + ("-aug" if opts.augment else "") + (
        f"-{opts.feature_backend}" if opts.feature_backend != "torch" else "")
    return default_exp_name(opts.dataset_label(), opts.from_checkpoint_path, opts.seed, f"linear-{variant}")


def check_options(opts: LinearOptions) -> None:
    SOLVERS.get(opts.solver)
    BACKENDS.get(opts.feature_backend)
    if opts.feature_backend != "torch":
        if why := missing(opts.feature_backend):
            raise UserError(f"--feature_backend {opts.feature_backend}: {why}")
    if opts.augment and opts.solver != "sgd":
        raise UserError(f"--augment feeds new features every epoch, which only the sgd solver can use; "
                        f"got --solver {opts.solver}")
    if not Path(opts.from_checkpoint_path).exists():       # a file, or a timm / Hugging Face model folder
        raise UserError(f"--from_checkpoint_path {opts.from_checkpoint_path}: file not found")


def solver_settings(opts: LinearOptions) -> SolverSettings:
    """The probe config (lbfgs, sklearn) and, for sgd, the study's trainer config with its overrides."""
    probe = load_config(opts.probe_config_path, LinearProbeConfig)
    if opts.solver != "sgd":
        return SolverSettings(probe=probe)
    trainer = load_config(opts.trainer_config_path, TrainerConfig)
    return SolverSettings(probe=probe, trainer=trainer, epochs=opts.epochs or trainer.epochs,
                          batch_size=opts.batch_size or trainer.batch_size)


def probe_inputs(up: Upstream, *, normalization: str, image_size: int | None,
                 interpolation: str | None) -> InputSettings:
    """The inputs the frozen upstream's features are extracted from: normalization 'imagenet' uses ImageNet's
    statistics (the study's pre-extraction); 'checkpoint' the file's."""
    stats = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)} if normalization == "imagenet" \
        else up.normalization
    return InputSettings(image_size=up.image_size(image_size), interpolation=interpolation or up.interpolation,
                         normalization=stats)


def data_kwargs(inputs: InputSettings) -> dict[str, Any]:
    """load_datasets' arguments for these inputs."""
    mean, std = inputs.mean_std()
    return {"image_size": inputs.image_size, "interpolation": inputs.interpolation, "mean": mean, "std": std}


def run_linear_finetuning(opts: LinearOptions) -> RunResult:
    """Freeze the checkpoint's backbone, fit a linear classifier on its features; returns the result."""
    check_options(opts)
    return run_steps(LinearSteps(opts, run_dir_for(opts.experiment_root_path, opts.exp_name or run_name(opts))))


class LinearSteps(RunSteps):
    """The run skeleton's steps for a linear probe: the upstream frozen, its features cached, a classifier fitted."""

    opts: LinearOptions

    def plan(self) -> str:
        self.settings = solver_settings(self.opts)
        self.device, _ = pick_device(cpu=self.opts.cpu, gpus=self.opts.gpus)
        check_results_table(self.experiment_root)
        return prepare_run_dir(self.run_dir, resume=self.opts.resume)

    def recorded_settings(self) -> dict[str, Any]:
        trainer = self.settings.trainer
        return {"options": self.opts.model_dump(), "probe": self.settings.probe.model_dump(),
                "trainer": trainer.model_dump() if trainer else None}

    def upstream(self) -> Upstream:
        return load_upstream(checkpoint_path=self.opts.from_checkpoint_path, flavour=self.opts.checkpoint_flavour,
                             arch=self.opts.arch).freeze()

    def data(self, upstream: Upstream) -> tuple[DatasetSplits, InputSettings]:
        opts = self.opts
        inputs = probe_inputs(upstream, normalization=opts.normalization, image_size=opts.image_size,
                              interpolation=opts.interpolation)
        return load_datasets(opts.dataset, opts.dataset_path, augment=False, max_train_samples=opts.max_train_samples,
                             seed=opts.seed, **data_kwargs(inputs)), inputs

    def fit(self, upstream: Upstream, data: DatasetSplits, inputs: InputSettings) -> dict[str, Any]:
        """The features of each split (cached), config.yaml, then the solver (or SGD on augmented features)."""
        opts, device, settings = self.opts, self.device, self.settings
        extractor = Extractor(backend=opts.feature_backend, model=upstream.model, device=device,
                              workdir=Path(opts.features_cache) / "onnx", input_size=inputs.image_size)
        splits = {split: cached_split(opts, upstream.model, upstream.source, data, split, extractor)
                  for split in (["test"] if opts.augment else ["train", "test"])}
        resolved = resolved_config(opts, upstream.source, inputs, data=data, settings=settings, splits=splits,
                                   device=device)
        write_run_config(self.run_dir, resolved, check_existing=False)
        metrics_path = self.run_dir / "metrics.jsonl"
        metrics_path.unlink(missing_ok=True)
        settings = dataclasses.replace(settings, on_epoch_end=epoch_logger(metrics_path, splits["test"]))
        if opts.augment:
            classifier = fit_augmented(opts, upstream.model, inputs, extractor=extractor,
                                       num_classes=data.num_classes, device=device, settings=settings)
        else:
            classifier = SOLVERS.get(opts.solver)(splits["train"].features, splits["train"].labels,
                                                  num_classes=data.num_classes, seed=opts.seed, device=device,
                                                  settings=settings)
        return {"classifier": classifier, "splits": splits, "settings": settings, "git_commit": resolved["git_commit"]}

    def record(self, upstream: Upstream, data: DatasetSplits, inputs: InputSettings, fitted: dict) -> RunResult:
        return finish(self.opts, upstream, inputs, fitted["classifier"], splits=fitted["splits"],
                      settings=fitted["settings"], num_classes=data.num_classes, run_dir=self.run_dir,
                      experiment_root=self.experiment_root, git_commit=fitted["git_commit"])


@dataclass(frozen=True)
class Extractor:
    """Which backend runs the frozen backbone, and on what; `build()` makes it (only when features are missing)."""

    backend: str
    model: torch.nn.Module
    device: torch.device
    workdir: Path
    input_size: int

    def build(self) -> Callable:
        return build_backend(self.backend, self.model, device=self.device, workdir=self.workdir,
                             input_size=self.input_size)


def cached_split(opts: LinearOptions, model: torch.nn.Module, source: dict[str, Any], data: DatasetSplits, split: str,
                 extractor: Extractor) -> FeatureSet:
    """One split's features from the cache (keyed by the checkpoint's `source`), extracted first if needed."""
    dataset = getattr(data, split)
    description = describe_split(checkpoint=source, dataset_meta=data.meta, split=split, dataset=dataset,
                                 backend=opts.feature_backend, extra={"content": content_fingerprint(dataset)})
    return cached_features(extractor.build, dataset, cache_root=opts.features_cache, description=description,
                           dim=model.feature_dim, batch_size=opts.extract_batch_size,
                           workers=loader_workers(opts.workers), progress=opts.progress)


def resolved_config(opts: LinearOptions, source: dict[str, Any], inputs: InputSettings, *, data: DatasetSplits,
                    settings: SolverSettings, splits: dict[str, FeatureSet], device: torch.device) -> dict[str, Any]:
    """config.yaml: the options, probe and trainer configs, checkpoint, data, features the run used."""
    return {
        "options": opts.model_dump(), "probe": settings.probe.model_dump(),
        "trainer": settings.trainer.model_dump() if settings.trainer else None, "checkpoint": source,
        "dataset": {"name": data.spec.name, "layout": data.layout, "num_classes": data.num_classes,
                    "train_size": len(data.train), "test_size": len(data.test), **data_kwargs(inputs),
                    "content": {name: fs.meta.get("content") for name, fs in splits.items()}},
        "features": {name: {"path": str(fs.path), "reused": fs.reused, "count": int(fs.meta["count"]),
                            "dim": int(fs.meta["dim"])} for name, fs in splits.items()},
        "derived": {"device": str(device), "epochs": settings.epochs, "batch_size": settings.batch_size},
        **environment_info(),
    }


def epoch_logger(metrics_path: Path, test: FeatureSet) -> Callable[[int, dict, LinearClassifier], None]:
    """sgd: one metrics.jsonl line per epoch, with the test accuracy observed (as the study logged it)."""

    def log_epoch(epoch: int, metrics: dict, clf: LinearClassifier) -> None:
        observed = score(clf, test.features, test.labels)
        append_jsonl(metrics_path, {"epoch": epoch, **metrics, "test_acc": observed["acc"],
                                    "test_loss": observed["loss"]})

    return log_epoch


def finish(opts: LinearOptions, up: Upstream, inputs: InputSettings, classifier: LinearClassifier, *,
           splits: dict[str, FeatureSet],
           settings: SolverSettings, num_classes: int, run_dir: Path, experiment_root: Path,
           git_commit: str) -> RunResult:
    """Score the test split once, save the classifier, record the result."""
    for entry in classifier.info.get("grid", []):
        append_jsonl(run_dir / "metrics.jsonl", {"stage": "l2_search", "l2": entry["l2"], "val_acc": entry["acc"],
                                                 "val_loss": entry["loss"]})
    final = score(classifier, splits["test"].features, splits["test"].labels)  # the test set's only use
    atomic_torch_save(run_dir / "classifier.pt", {**classifier.state_dict(), "info": classifier.info,
                                                  "num_classes": num_classes, "checkpoint": up.source})
    record = result_record(opts, up, inputs, classifier, final, settings=settings, run_dir=run_dir,
                           git_commit=git_commit, splits=splits)
    record_result(run_dir, experiment_root, record)
    return RunResult(record=record, run_dir=run_dir, input=inputs)


def result_record(opts: LinearOptions, up: Upstream, inputs: InputSettings, classifier: LinearClassifier,
                  final: dict, *,
                  settings: SolverSettings, run_dir: Path, git_commit: str, splits: dict) -> dict[str, Any]:
    """The result: the same keys as full fine-tuning's, finetuning=linear, plus the probe's."""
    model = up.model
    sparsity = measured_sparsity(model)
    if not opts.model_label:
        check_dense_label(up.method, sparsity, opts.from_checkpoint_path)
    return ResultRow(
        dset=opts.dataset_label(), model=opts.model_label or up.method,
        sparsity=opts.sparsity_label if opts.sparsity_label is not None else round(sparsity, 2),
        seed=opts.seed, val_acc=final["acc"], finetuning="linear", arch=up.arch,
        checkpoint=opts.from_checkpoint_path, flavour=up.flavour or "", recipe="", solver=opts.solver,
        lr=settings.trainer.optimizer.lr if settings.trainer else "", epochs=settings.epochs or "",
        batch_size=settings.batch_size or "", measured_sparsity=sparsity, run_dir=str(run_dir),
        git_commit=git_commit, finished_at=now_iso(), task="classification", map="", map50="", precision="",
        details={"test_loss": final["loss"], "l2": classifier.info.get("l2"), "l2_grid": classifier.info.get("grid"),
                 "feature_backend": opts.feature_backend, "augment": opts.augment,
                 "features_reused": {name: fs.reused for name, fs in splits.items()},
                 "per_layer_sparsity": layer_sparsity(masks_from_zeros(sparse_layers(model))),
                 "input": asdict(inputs)}).record()


def fit_augmented(opts: LinearOptions, model: torch.nn.Module, inputs: InputSettings, *, extractor: Extractor,
                  num_classes: int,
                  device: torch.device, settings: SolverSettings) -> LinearClassifier:
    """SGD on features of freshly augmented training images each epoch, through the frozen backbone."""
    data = load_datasets(opts.dataset, opts.dataset_path, augment=True, max_train_samples=opts.max_train_samples,
                         seed=opts.seed, **data_kwargs(inputs))
    run = extractor.build()
    dim = model.feature_dim

    def epoch_features(epoch: int):
        # each image's augmentation from (seed, epoch, index): the same with any number of workers
        images = SampleSeeded(data.train, epoch_key=epoch_seed(opts.seed, epoch))
        fs = extract_features(run, images, dim=dim, batch_size=opts.extract_batch_size,
                              workers=loader_workers(opts.workers),
                              desc=f"epoch {epoch} features", progress=opts.progress, seed=epoch_seed(opts.seed, epoch))
        return fs.features, fs.labels

    return fit_sgd_epochs(epoch_features, dim=dim, num_classes=num_classes, seed=opts.seed, device=device,
                          trainer=settings.trainer, epochs=settings.epochs, batch_size=settings.batch_size,
                          on_epoch_end=settings.on_epoch_end)
