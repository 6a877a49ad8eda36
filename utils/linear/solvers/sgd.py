"""sgd: the study's linear protocol -- nn.Linear on raw features, the trainer config's optimizer and schedule."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policies.trainer import TrainerConfig, build_optimizer, lr_at
from utils.errors import UserError
from utils.linear.solvers.base import SOLVERS, Array, LinearClassifier, SolverSettings, as_tensor, check_labels


def fit_sgd_epochs(epoch_features: Callable[[int], tuple[Array, Array]], *, dim: int, num_classes: int, seed: int,
                   device: torch.device | str, trainer: TrainerConfig, epochs: int, batch_size: int,
                   on_epoch_end: Callable[[int, dict, LinearClassifier], None] | None = None) -> LinearClassifier:
    """nn.Linear trained with the trainer config's optimizer and schedule on raw features.

    `epoch_features(epoch)` gives that epoch's training features: the same cached arrays every epoch,
    or freshly augmented images through the frozen backbone.
    """
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(dim, num_classes)
    bound = 1.0 / math.sqrt(dim)  # nn.Linear's default init, from our own generator
    with torch.no_grad():
        head.weight.copy_(torch.rand(num_classes, dim, generator=gen) * 2 * bound - bound)
        head.bias.copy_(torch.rand(num_classes, generator=gen) * 2 * bound - bound)
    head.to(device)
    optimizer = build_optimizer(head, trainer.optimizer)
    base_lr, step = trainer.optimizer.lr, 0
    zeros, ones = torch.zeros(dim, device=device), torch.ones(dim, device=device)
    for epoch in range(epochs):
        x, y = epoch_features(epoch)
        xt, yt = as_tensor(x, device), torch.as_tensor(check_labels(y, num_classes), device=device)
        order = torch.randperm(len(yt), generator=gen).to(device)
        steps_per_epoch = math.ceil(len(yt) / batch_size)
        total_loss = correct = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            lr = lr_at(step, steps_per_epoch=steps_per_epoch, total_epochs=epochs, base_lr=base_lr,
                       cfg=trainer.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = head(xt[idx])
            loss = F.cross_entropy(logits, yt[idx], label_smoothing=trainer.label_smoothing)
            if not torch.isfinite(loss):
                raise UserError(f"sgd: non-finite loss at epoch {epoch}, step {step}, lr {lr:g}; lower the lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            total_loss += float(loss.detach()) * len(idx)
            correct += float((logits.argmax(1) == yt[idx]).sum())
        if on_epoch_end is not None:
            metrics = {"train_loss": total_loss / len(yt), "train_acc": correct / len(yt), "lr": lr}
            on_epoch_end(epoch, metrics, _sgd_classifier(head, zeros, ones, {}))
    info = {"solver": "sgd", "epochs": epochs, "batch_size": batch_size, "lr": base_lr, "steps": step}
    return _sgd_classifier(head, zeros, ones, info)


def _sgd_classifier(head: nn.Linear, zeros: torch.Tensor, ones: torch.Tensor, info: dict) -> LinearClassifier:
    return LinearClassifier(weight=head.weight.detach().clone(), bias=head.bias.detach().clone(),
                            mean=zeros, scale=ones, info=info)


@SOLVERS.register("sgd")
def fit_sgd(x: Array, y: Array, *, num_classes: int, seed: int, device: torch.device | str = "cpu",
            settings: SolverSettings = SolverSettings()) -> LinearClassifier:
    """The study's linear protocol on cached features (the trainer config: SGD, step schedule)."""
    if settings.trainer is None:
        raise UserError("the sgd solver needs a trainer config (--training_config_path), e.g. "
                        "configs/trainers/study_linear_sgd.yaml")
    trainer = settings.trainer
    return fit_sgd_epochs(lambda _: (x, y), dim=int(np.shape(x)[1]), num_classes=num_classes, seed=seed,
                          device=device, trainer=trainer, epochs=settings.epochs or trainer.epochs,
                          batch_size=settings.batch_size or trainer.batch_size, on_epoch_end=settings.on_epoch_end)
