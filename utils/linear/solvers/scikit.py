"""sklearn: the lbfgs protocol (same split, grid, selection, refit) with scikit-learn's LogisticRegression
(float64), as a reference for the torch solver."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from utils.errors import UserError
from utils.linear.solvers.base import (
    SOLVERS,
    Array,
    LinearClassifier,
    SolverSettings,
    check_labels,
    search_l2,
    standardizer,
    stratified_split,
)


def _standardized(x: Array, standardize: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x standardized in float64, the mean and scale used: zeros and ones when `standardize` is off)."""
    x_np = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    mean, scale = (t.numpy().astype(np.float64) for t in standardizer(torch.as_tensor(x_np)))
    if not standardize:
        mean, scale = np.zeros_like(mean), np.ones_like(scale)
    return (x_np - mean) / scale, mean, scale


def _all_classes(model, num_classes: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitted LogisticRegression as (weight, bias) over every class: a class absent from training gets bias
    -1e4 (never predicted); a binary fit's one row becomes two opposite halves."""
    weight = np.zeros((num_classes, features))
    bias = np.full(num_classes, -1e4)
    if len(model.classes_) == 2:  # binary: sklearn stores one row for the positive class
        coef = np.concatenate([-model.coef_ / 2, model.coef_ / 2])
        icpt = np.concatenate([-model.intercept_ / 2, model.intercept_ / 2])
    else:
        coef, icpt = model.coef_, model.intercept_
    weight[model.classes_], bias[model.classes_] = coef, icpt
    return weight, bias


@SOLVERS.register("sklearn")
def fit_sklearn(x: Array, y: Array, *, num_classes: int, seed: int, device: torch.device | str = "cpu",
                settings: SolverSettings = SolverSettings()) -> LinearClassifier:
    """The lbfgs protocol (same split, grid, selection, refit) with scikit-learn's LogisticRegression."""
    from sklearn.exceptions import ConvergenceWarning  # imported here: scikit-learn is slow to import
    from sklearn.linear_model import LogisticRegression

    del device  # scikit-learn runs on the CPU
    cfg = settings.probe
    y_np = check_labels(y, num_classes)
    xs, mean, scale = _standardized(x, cfg.standardize)
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
    weight, bias = _all_classes(model, num_classes, xs.shape[1])
    info = {"solver": "sklearn", "l2": best_l2, "sklearn_C": 1.0 / (best_l2 * len(y_np)), "grid": scores,
            "iterations": iterations, "train_size": len(y_np), "val_size": len(val_idx)}
    f32 = torch.float32
    return LinearClassifier(weight=torch.as_tensor(weight, dtype=f32), bias=torch.as_tensor(bias, dtype=f32),
                            mean=torch.as_tensor(mean, dtype=f32), scale=torch.as_tensor(scale, dtype=f32), info=info)
