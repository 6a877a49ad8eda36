"""Linear fine-tuning: one run from options to result row. finetune_pre_extracted_features.py calls
`run_linear_finetuning`.

The backbone is frozen; its pooled features are extracted once per (checkpoint, dataset split,
transform) into the features cache, and only a linear classifier is fitted (utils.linear_probe).
With `augment`, training features come from freshly augmented images every epoch instead (the
study's DeepSparse variant; SGD only, nothing cached for training).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from policies.manager import epoch_seed, seed_everything
from policies.trainer import TrainerConfig
from utils.checkpoints import file_sha256, load_checkpoint
from utils.config import StrictModel, load_config
from utils.datasets import load_datasets
from utils.errors import UserError
from utils.experiment import pick_device
from utils.features import BACKENDS, FeatureSet, build_backend, cached_features, describe_split, extract_features
from utils.finetune import measured_sparsity, sparse_layers
from utils.io import append_jsonl, atomic_torch_save
from utils.linear_baselines import fit_sgd_epochs
from utils.linear_probe import SOLVERS, LinearClassifier, LinearProbeConfig, SolverSettings, score
from utils.masks import layer_sparsity, masks_from_zeros
from utils.run import (environment_info, finished_result, now_iso, prepare_run_dir, record_result,
                       write_run_config)
from utils.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class LinearOptions(StrictModel):
    """Everything finetune_pre_extracted_features.py's flags say about one run."""

    dataset: str
    dataset_path: str | None = None
    from_checkpoint_path: str
    checkpoint_flavour: str | None = None
    training_config_path: str = str(CONFIG_DIR / "trainers" / "study_linear_sgd.yaml")  # the sgd solver's protocol
    probe_config_path: str = str(CONFIG_DIR / "probes" / "lbfgs.yaml")  # the lbfgs/sklearn solvers' settings
    solver: str = "lbfgs"
    epochs: int | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    seed: int = 0
    cpu: bool = False
    gpus: list[int] | None = None
    features_cache: str = "features_cache"
    feature_backend: str = "torch"
    augment: bool = False
    extract_batch_size: int = Field(default=64, gt=0)
    workers: int = Field(default=4, ge=0)
    normalization: Literal["imagenet", "checkpoint"] = "imagenet"
    interpolation: Literal["bilinear", "bicubic"] | None = None
    image_size: int | None = Field(default=None, gt=0)
    max_train_samples: int | None = Field(default=None, gt=0)
    experiment_root_path: str = "experiments/linear"
    exp_name: str | None = None
    model_label: str | None = None
    sparsity_label: float | None = Field(default=None, ge=0, le=1)
    resume: bool = False
    progress: bool = True


def default_exp_name(opts: LinearOptions) -> str:
    variant = opts.solver + ("-aug" if opts.augment else "") + (
        f"-{opts.feature_backend}" if opts.feature_backend != "torch" else "")
    return f"{opts.dataset}_{Path(opts.from_checkpoint_path).stem}_linear-{variant}_seed{opts.seed}"


def check_options(opts: LinearOptions) -> None:
    SOLVERS.get(opts.solver)
    BACKENDS.get(opts.feature_backend)
    if opts.augment and opts.solver != "sgd":
        raise UserError(f"--augment feeds new features every epoch, which only the sgd solver can use; "
                        f"got --solver {opts.solver}")
    if not Path(opts.from_checkpoint_path).is_file():
        raise UserError(f"--from_checkpoint_path {opts.from_checkpoint_path}: file not found")


@dataclass(frozen=True)
class FrozenUpstream:
    """The frozen backbone and what its features depend on."""

    loaded: Any  # utils.checkpoints.LoadedCheckpoint
    checkpoint: dict[str, Any]  # path, content hash, flavour, arch: the cache's checkpoint key
    data_kw: dict[str, Any]  # image_size, interpolation, mean, std for load_datasets

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model


def load_frozen(opts: LinearOptions) -> FrozenUpstream:
    loaded = load_checkpoint(opts.from_checkpoint_path, flavour=opts.checkpoint_flavour)
    loaded.model.eval()
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    checkpoint = {"path": str(Path(opts.from_checkpoint_path).resolve()),
                  "sha256": file_sha256(opts.from_checkpoint_path), "flavour": loaded.flavour.name,
                  "arch": loaded.arch, "arch_kwargs": dict(loaded.arch_kwargs or {})}
    mean, std = input_normalization(opts, loaded.normalization)
    data_kw = {"image_size": opts.image_size or loaded.model.default_input_size, "mean": mean, "std": std,
               "interpolation": opts.interpolation or loaded.interpolation}
    return FrozenUpstream(loaded=loaded, checkpoint=checkpoint, data_kw=data_kw)


def run_linear_finetuning(opts: LinearOptions) -> dict[str, Any]:
    """Freeze the checkpoint's backbone, fit a linear classifier on its features; returns the result."""
    check_options(opts)
    probe = load_config(opts.probe_config_path, LinearProbeConfig)
    trainer = load_config(opts.training_config_path, TrainerConfig) if opts.solver == "sgd" else None
    settings = SolverSettings(probe=probe, trainer=trainer, epochs=(opts.epochs or trainer.epochs) if trainer else None,
                              batch_size=(opts.batch_size or trainer.batch_size) if trainer else None)
    device, _ = pick_device(opts)
    experiment_root = Path(opts.experiment_root_path)
    run_dir = experiment_root / (opts.exp_name or default_exp_name(opts))
    if prepare_run_dir(run_dir, resume=opts.resume) == "finished":
        log.info("%s is already finished; reporting its result", run_dir)
        return finished_result(run_dir, experiment_root)

    seed_everything(opts.seed)
    up = load_frozen(opts)
    data = load_datasets(opts.dataset, opts.dataset_path, augment=False, max_train_samples=opts.max_train_samples,
                         seed=opts.seed, **up.data_kw)
    backend_kw = {"device": device, "workdir": Path(opts.features_cache) / "onnx",
                  "input_size": up.data_kw["image_size"]}
    splits = {split: cached_split(opts, up, data, split, backend_kw)
              for split in (["test"] if opts.augment else ["train", "test"])}
    resolved = {
        "options": opts.model_dump(), "probe": probe.model_dump(), "trainer": trainer.model_dump() if trainer else None,
        "checkpoint": up.checkpoint,
        "dataset": {"name": data.spec.name, "layout": data.layout, "num_classes": data.num_classes,
                    "train_size": len(data.train), "test_size": len(data.test), **up.data_kw},
        "features": {name: {"path": str(fs.path), "reused": fs.reused, "count": int(fs.meta["count"]),
                            "dim": int(fs.meta["dim"])} for name, fs in splits.items()},
        "derived": {"device": str(device), "epochs": settings.epochs, "batch_size": settings.batch_size},
        **environment_info(),
    }
    write_run_config(run_dir, resolved, check_existing=False)

    test = splits["test"]
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)

    def log_epoch(epoch: int, metrics: dict, clf: LinearClassifier) -> None:
        observed = score(clf, test.features, test.labels)  # observed only, as the study logged it
        append_jsonl(metrics_path, {"epoch": epoch, **metrics, "test_acc": observed["acc"],
                                    "test_loss": observed["loss"]})

    settings = dataclasses.replace(settings, on_epoch_end=log_epoch)
    if opts.augment:
        classifier = fit_augmented(opts, up, backend_kw=backend_kw, num_classes=data.num_classes, device=device,
                                   settings=settings)
    else:
        classifier = SOLVERS.get(opts.solver)(splits["train"].features, splits["train"].labels,
                                              num_classes=data.num_classes, seed=opts.seed, device=device,
                                              settings=settings)
    for entry in classifier.info.get("grid", []):
        append_jsonl(metrics_path, {"stage": "l2_search", "l2": entry["l2"], "val_acc": entry["acc"],
                                    "val_loss": entry["loss"]})
    final = score(classifier, test.features, test.labels)  # the test set's only use for lbfgs/sklearn
    atomic_torch_save(run_dir / "classifier.pt", {**classifier.state_dict(), "info": classifier.info,
                                                  "num_classes": data.num_classes, "checkpoint": up.checkpoint})
    result = result_row(opts, up, classifier, final, settings=settings, run_dir=run_dir,
                        git_commit=resolved["git_commit"], splits=splits)
    record_result(run_dir, experiment_root, result)
    return result


def cached_split(opts: LinearOptions, up: FrozenUpstream, data, split: str, backend_kw: dict) -> FeatureSet:
    """One split's features from the cache, extracted first if needed."""
    dataset = getattr(data, split)
    description = describe_split(checkpoint=up.checkpoint, dataset_meta=data.meta, split=split, dataset=dataset,
                                 backend=opts.feature_backend)
    return cached_features(lambda: build_backend(opts.feature_backend, up.model, **backend_kw), dataset,
                           cache_root=opts.features_cache, description=description, dim=up.model.num_features,
                           batch_size=opts.extract_batch_size, workers=opts.workers, progress=opts.progress)


def result_row(opts: LinearOptions, up: FrozenUpstream, classifier: LinearClassifier, final: dict, *,
               settings: SolverSettings, run_dir: Path, git_commit: str, splits: dict) -> dict[str, Any]:
    """The result: the same keys as full fine-tuning's (utils.finetune), finetuning=linear, plus the probe's."""
    model, flavour = up.model, up.loaded.flavour
    sparsity = measured_sparsity(model)
    return {
        "dset": opts.dataset, "model": opts.model_label or flavour.method or flavour.name or "Dense",
        "sparsity": opts.sparsity_label if opts.sparsity_label is not None else round(sparsity, 2),
        "seed": opts.seed, "val_acc": final["acc"], "test_loss": final["loss"],
        "finetuning": "linear", "arch": up.loaded.arch, "checkpoint": opts.from_checkpoint_path,
        "flavour": flavour.name or "", "recipe": "", "solver": opts.solver,
        "lr": settings.trainer.optimizer.lr if settings.trainer else "", "epochs": settings.epochs or "",
        "batch_size": settings.batch_size or "", "measured_sparsity": sparsity, "run_dir": str(run_dir),
        "git_commit": git_commit, "finished_at": now_iso(),
        "l2": classifier.info.get("l2"), "l2_grid": classifier.info.get("grid"),
        "feature_backend": opts.feature_backend, "augment": opts.augment,
        "features_reused": {name: fs.reused for name, fs in splits.items()},
        "per_layer_sparsity": layer_sparsity(masks_from_zeros(sparse_layers(model))),
    }


def input_normalization(opts: LinearOptions, normalization: Any) -> tuple[Any, Any]:
    """ImageNet statistics (the study's pre-extraction), or the checkpoint's (None = the dataset's)."""
    if opts.normalization == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if isinstance(normalization, dict):
        return normalization["mean"], normalization["std"]
    return None, None


def fit_augmented(opts: LinearOptions, up: FrozenUpstream, *, backend_kw: dict, num_classes: int,
                  device: torch.device, settings: SolverSettings) -> LinearClassifier:
    """SGD on features of freshly augmented training images each epoch, through the frozen backbone."""
    data = load_datasets(opts.dataset, opts.dataset_path, augment=True, max_train_samples=opts.max_train_samples,
                         seed=opts.seed, **up.data_kw)
    run = build_backend(opts.feature_backend, up.model, **backend_kw)
    dim = up.model.num_features

    def epoch_features(epoch: int):
        torch.manual_seed(epoch_seed(opts.seed, epoch))  # augmentation in the main process (workers=0)
        fs = extract_features(run, data.train, dim=dim, batch_size=opts.extract_batch_size, workers=opts.workers,
                              desc=f"epoch {epoch} features", progress=opts.progress, seed=epoch_seed(opts.seed, epoch))
        return fs.features, fs.labels

    return fit_sgd_epochs(epoch_features, dim=dim, num_classes=num_classes, seed=opts.seed, device=device,
                          trainer=settings.trainer, epochs=settings.epochs, batch_size=settings.batch_size,
                          on_epoch_end=settings.on_epoch_end)
