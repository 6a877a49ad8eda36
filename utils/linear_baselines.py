"""The reference linear solvers: scikit-learn's LogisticRegression and the study's SGD protocol.

Both register into utils.linear_probe.SOLVERS (imported from there, so `SOLVERS` always lists them).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policies.trainer import TrainerConfig, build_optimizer, lr_at
from utils.errors import UserError
from utils.linear_probe import (SOLVERS, Array, LinearClassifier, SolverSettings, as_tensor, check_labels, search_l2,
                                standardizer, stratified_split)


@SOLVERS.register("sklearn")
def fit_sklearn(x: Array, y: Array, *, num_classes: int, seed: int, device: torch.device | str = "cpu",
                settings: SolverSettings = SolverSettings()) -> LinearClassifier:
    """The lbfgs protocol (same split, grid, selection, refit) with scikit-learn's LogisticRegression."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    del device  # scikit-learn runs on the CPU
    cfg = settings.probe
    y_np = check_labels(y, num_classes)
    x_np = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    mean, scale = (t.numpy().astype(np.float64) for t in standardizer(torch.as_tensor(x_np)))
    if not cfg.standardize:
        mean, scale = np.zeros_like(mean), np.ones_like(scale)
    xs = (x_np - mean) / scale
    fit_idx, val_idx = stratified_split(y_np, cfg.val_fraction, seed)
    if len(np.unique(y_np[fit_idx])) < 2:
        raise UserError("sklearn solver: the training split holds a single class")
    model = LogisticRegression(max_iter=cfg.sklearn_max_iter, tol=cfg.tolerance_grad, warm_start=cfg.sklearn_warm_start)
    iterations: list[int] = []

    def fit_on(idx: np.ndarray, l2: float, init: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        model.set_params(C=1.0 / (l2 * len(idx)))
        if init is not None and cfg.sklearn_warm_start:
            model.coef_, model.intercept_ = init[0].copy(), init[1].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(xs[idx], y_np[idx])
        iterations.append(int(np.max(model.n_iter_)))
        return model.coef_.copy(), model.intercept_.copy()

    def evaluate(state: tuple[np.ndarray, np.ndarray]) -> dict:
        logits = xs[val_idx] @ state[0].T + state[1]
        if logits.shape[1] == 1:  # binary: one column for the positive class
            logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
        logits -= logits.max(1, keepdims=True)
        log_proba = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        cols = np.searchsorted(model.classes_, y_np[val_idx])
        return {"acc": float((model.classes_[logits.argmax(1)] == y_np[val_idx]).mean()),
                "loss": float(-log_proba[np.arange(len(val_idx)), cols].mean())}

    best_l2, best_state, scores = search_l2(cfg.l2_grid, fit=lambda l2, init: fit_on(fit_idx, l2, init),
                                            evaluate=evaluate, patience=cfg.patience)
    fit_on(np.arange(len(y_np)), best_l2, best_state)
    weight = np.zeros((num_classes, xs.shape[1]))
    bias = np.full(num_classes, -1e4)  # a class absent from training is never predicted
    if len(model.classes_) == 2:  # binary: sklearn stores one row for the positive class
        coef = np.concatenate([-model.coef_ / 2, model.coef_ / 2])
        icpt = np.concatenate([-model.intercept_ / 2, model.intercept_ / 2])
    else:
        coef, icpt = model.coef_, model.intercept_
    weight[model.classes_], bias[model.classes_] = coef, icpt
    info = {"solver": "sklearn", "l2": best_l2, "sklearn_C": 1.0 / (best_l2 * len(y_np)), "grid": scores,
            "iterations": iterations, "train_size": len(y_np), "val_size": len(val_idx)}
    f32 = torch.float32
    return LinearClassifier(weight=torch.as_tensor(weight, dtype=f32), bias=torch.as_tensor(bias, dtype=f32),
                            mean=torch.as_tensor(mean, dtype=f32), scale=torch.as_tensor(scale, dtype=f32), info=info)


# ---------------------------------------------------------------- sgd (the study's protocol)


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
