"""What a full run trains on and for: the downstream data prepared as the upstream expects, the model's new head,
masks and frozen parts, a detector's anchors, the loaders, and the task (loss and evaluation)."""
from __future__ import annotations

import logging
import math

import torch
from torch import nn

from models import build_model
from policies.tasks import Task
from utils.data import DatasetSplits
from utils.errors import UserError
from utils.runs.kinds import InputSettings
from utils.runs.options import TransferConfig
from utils.runs.plan import Plan
from utils.runs.setup import Upstream, freeze_, make_loaders, reinitialize_unloaded_
from utils.sparsity import masks_from_zeros, measured_sparsity, sparse_layers
from utils.tasks import task

log = logging.getLogger(__name__)


def load_data(upstream: Upstream, *, dataset: str, dataset_path: str | None, image_size: int | None,
              interpolation: str | None, max_train_samples: int | None, seed: int,
              mosaic: float = 0.0, checkpoint: str | None = None) -> tuple[DatasetSplits, InputSettings]:
    """The downstream splits, prepared as the upstream expects (its resize and normalisation unless overridden)."""
    kind, data_kind = task(arch=upstream.arch), task(dataset=dataset)
    if kind is not data_kind:
        data = data_kind.data_source(dataset, dataset_path) or dataset
        model = f"the checkpoint {checkpoint} holds {upstream.arch}" if checkpoint else upstream.arch
        raise UserError(f"{model}, a {kind.model_noun}, and the data {data!r} is a {data_kind.name} dataset; "
                        "detectors (yolov5*) train on YOLO data (a data.yaml), classifiers on image datasets: give a "
                        "checkpoint of the data's task")
    inputs = InputSettings(**{"image_size": upstream.image_size(image_size),
                              "interpolation": interpolation or upstream.interpolation,
                              "normalization": upstream.normalization, **kind.fixed_inputs})
    mean, std = inputs.mean_std()
    data = kind.load_splits(dataset, dataset_path, image_size=inputs.image_size, interpolation=inputs.interpolation,
                            mean=mean, std=std, max_train_samples=max_train_samples, seed=seed, mosaic=mosaic)
    return data, inputs


def check_mosaic(mosaic: float, *, arch: str, trainer_config: str | None) -> None:
    """Mosaic is detection augmentation: a classifier's trainer config may not ask for it."""
    if mosaic and not task(arch=arch).accepts_mosaic:
        raise UserError(f"{trainer_config}: 'mosaic: {mosaic}' is detection augmentation and {arch} is a classifier; "
                        "remove the key (or set it to 0)")


def task_for(model: nn.Module, *, image_size: int, label_smoothing: float) -> Task:
    """What the run learns: a detector's loss and mAP, or a classifier's cross-entropy and accuracy."""
    return task(model=model).loop_task(model, image_size=image_size, label_smoothing=label_smoothing)


def prepare_model_(upstream: Upstream, *, num_classes: int, transfer: TransferConfig,
                   device: torch.device) -> tuple[dict[str, torch.Tensor], list[nn.Module], float]:
    """New head, optional re-initialisation and freezing; returns (the masks to hold, the frozen modules, the
    loaded sparsity).

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
    return masks, frozen, measured_sparsity(model)


def fit_anchors_(upstream: Upstream, data: DatasetSplits, *, image_size: int, seed: int) -> None:
    """The model adapted to the data before training, as its task does (a detector's anchors checked against the
    data's boxes, YOLOv5's autoanchor; nothing for a classifier)."""
    done = task(arch=upstream.arch).fit_to_data_(upstream.model, data, image_size=image_size, seed=seed)
    if done:
        log.info("%s", done)


def run_loaders(data: DatasetSplits, plan: Plan, *, workers: int) -> tuple[tuple, int]:
    """(train and test loaders, optimizer steps per epoch); warns where accumulation spans more than an epoch."""
    loaders = make_loaders(data, batch_size=plan.batch_size, test_batch_size=plan.trainer.test_batch_size or
                           plan.batch_size, workers=workers, device=plan.device, dist=plan.dist)
    batches = len(loaders[0])
    if plan.accumulate > batches:
        log.warning("gradient accumulation over %d batches, but an epoch has %d: each epoch makes one optimizer step "
                    "over its %d batches (accumulation does not cross epochs); lower --accumulate_steps (or the "
                    "nominal batch size) to at most %d", plan.accumulate, batches, batches, batches)
    return loaders, math.ceil(batches / plan.accumulate)
