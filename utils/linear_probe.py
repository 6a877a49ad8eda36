"""Linear classifiers on fixed features. Solvers are pure functions (features, labels) -> LinearClassifier.

    lbfgs    full-batch multinomial logistic regression in torch (L-BFGS, float32, standardised
             features, optimised in the features' principal basis with a diagonal preconditioner); the
             L2 strength is chosen on a seeded stratified validation split carved from the training set
             (a log grid walked strongest-first with warm starts), then refit on all training data.
    sklearn  the same protocol with scikit-learn's LogisticRegression (float64), as a reference.
    sgd      the study's protocol: nn.Linear on raw features, SGD + step schedule from a trainer config.
(sklearn and sgd live in utils/linear_baselines.py.) No solver ever sees the test set.

The objective of lbfgs/sklearn is mean cross-entropy + l2/2 * ||W||^2 (bias unpenalised), i.e.
scikit-learn's C = 1 / (l2 * n_samples).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, field_validator
from torch import nn

from policies.trainer import TrainerConfig
from utils.config import StrictModel
from utils.errors import UserError
from utils.registry import Registry

log = logging.getLogger(__name__)

SOLVERS: Registry[Callable[..., "LinearClassifier"]] = Registry("linear solver")
Array = np.ndarray | torch.Tensor


class LinearProbeConfig(StrictModel):
    """A `configs/probes/lbfgs.yaml` file: settings of the lbfgs and sklearn solvers."""

    l2_grid: list[float] = Field(default_factory=lambda: [10.0**e for e in range(0, -7, -1)], min_length=1)
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    patience: PositiveInt | None = 2  # stop the grid after this many values in a row no better than the best
    standardize: bool = True
    tolerance_grad: float = Field(default=1e-5, gt=0)  # both solvers: stop when max |gradient| <= this
    search_max_iter: PositiveInt = 40  # lbfgs: iterations per validation fit (warm-started along the grid)
    search_relative_tolerance: float | None = Field(default=0.01, gt=0, lt=1)  # ... or until |grad| shrank this much
    max_iter: PositiveInt = 300  # lbfgs: iterations of the final refit on all training data
    history_size: PositiveInt = 10
    precondition: bool = True  # lbfgs: optimise in the features' principal basis, diagonally preconditioned
    tolerance_change: float = Field(default=1e-9, gt=0)  # lbfgs: stop when the loss changes less than this
    sklearn_max_iter: PositiveInt = 1000
    sklearn_warm_start: bool = False  # False: a fresh fit per grid value, scikit-learn's usual use

    @field_validator("l2_grid")
    @classmethod
    def _positive(cls, grid: list[float]) -> list[float]:
        if min(grid) <= 0:
            raise ValueError("every l2 value must be > 0")
        return sorted(set(grid), reverse=True)  # strongest first: warm starts move toward weaker fits


@dataclass(frozen=True)
class SolverSettings:
    """What a solver may read: the probe config (lbfgs, sklearn) and the SGD protocol (sgd)."""

    probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    trainer: TrainerConfig | None = None
    epochs: int | None = None  # sgd: overrides trainer.epochs
    batch_size: int | None = None  # sgd: overrides trainer.batch_size
    on_epoch_end: Callable[[int, dict[str, float], "LinearClassifier"], None] | None = None


@dataclass
class LinearClassifier:
    """logits = ((x - mean) / scale) @ weight.T + bias; `info` says how it was fitted."""

    weight: torch.Tensor  # (num_classes, dim)
    bias: torch.Tensor  # (num_classes,)
    mean: torch.Tensor  # (dim,)
    scale: torch.Tensor  # (dim,)
    info: dict[str, Any] = field(default_factory=dict)

    def logits(self, x: Array) -> torch.Tensor:
        x = as_tensor(x, self.weight.device)
        return torch.addmm(self.bias, (x - self.mean) / self.scale, self.weight.T)

    def to_linear(self) -> nn.Linear:
        """The equivalent nn.Linear on raw features (the standardisation folded in)."""
        weight = self.weight / self.scale
        head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(self.bias - weight @ self.mean)
        return head

    def state_dict(self) -> dict[str, Any]:
        folded = self.to_linear()
        return {"weight": folded.weight.detach().cpu(), "bias": folded.bias.detach().cpu(),
                "standardized_weight": self.weight.cpu(), "standardized_bias": self.bias.cpu(),
                "mean": self.mean.cpu(), "scale": self.scale.cpu()}


def as_tensor(x: Array, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device=device, dtype=dtype)


def score(classifier: LinearClassifier, x: Array, y: Array) -> dict[str, float]:
    """Accuracy and mean cross-entropy of `classifier` on (x, y)."""
    with torch.no_grad():
        logits = classifier.logits(x)
        y = as_tensor(y, logits.device, torch.long)
        return {"acc": float((logits.argmax(1) == y).float().mean()), "loss": float(F.cross_entropy(logits, y))}


def standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and scale; constant features (dead channels of sparse nets) get scale 1."""
    mean = x.mean(0)
    std = x.std(0)
    return mean, torch.where(std > 1e-6 * (std.max() + 1e-12), std, torch.ones_like(std))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, val) indices keeping class proportions; classes with one sample stay in train."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(int(round(val_fraction * len(idx))), len(idx) - 1) if len(idx) > 1 else 0
        val.append(idx[:k])
        train.append(idx[k:])
    train_idx, val_idx = np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
    if len(val_idx) == 0:
        raise UserError(f"cannot carve a validation split ({val_fraction:.0%}) from {len(labels)} training "
                        "samples; use more data, a larger val_fraction, or --solver sgd")
    return train_idx, val_idx


def check_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    y = np.asarray(y).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise UserError(f"labels must lie in [0, {num_classes}); got {y.min()}..{y.max()}")
    return y


def search_l2(grid: list[float], *, fit: Callable[[float, Any], Any], evaluate: Callable[[Any], dict],
              patience: int | None) -> tuple[float, Any, list[dict]]:
    """Walk the grid strongest-first, each fit warm-started from the previous; best validation accuracy
    (ties: lower validation loss) wins. Returns (best l2, its fitted state, per-value scores)."""
    best, best_state, scores, state, worse = None, None, [], None, 0
    for l2 in grid:
        state = fit(l2, state)
        s = {"l2": l2, **evaluate(state)}
        scores.append(s)
        log.info("l2 %.1e: validation accuracy %.4f, loss %.4f", l2, s["acc"], s["loss"])
        if best is None or (s["acc"], -s["loss"]) > (best["acc"], -best["loss"]):
            best, best_state, worse = s, state, 0
        else:
            worse += 1
            if patience is not None and worse >= patience:
                break
    return best["l2"], best_state, scores


# ---------------------------------------------------------------- lbfgs (torch)


def fit_multinomial(x: torch.Tensor, y: torch.Tensor, *, num_classes: int, l2: float, max_iter: int,
                    cfg: LinearProbeConfig, relative_tolerance: float | None = None,
                    precondition: torch.Tensor | None = None,
                    init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Full-batch L-BFGS on mean CE(x W + b) + l2/2 ||W||^2; returns (W of shape (dim, classes), b, iterations).

    Stops at max |gradient| <= cfg.tolerance_grad or, with `relative_tolerance`, once the gradient has
    shrunk by that factor from its starting value, whichever comes first. `precondition` (one positive
    scale per feature) optimises V = W / precondition instead: the same minimiser, a better-conditioned search.
    """
    s = precondition[:, None] if precondition is not None else x.new_ones(x.shape[1], 1)
    w0, b0 = init if init is not None else (x.new_zeros(x.shape[1], num_classes), x.new_zeros(num_classes))
    w, b = (w0 / s).requires_grad_(True), b0.clone().requires_grad_(True)
    xs = x * s.T if precondition is not None else x

    def objective() -> torch.Tensor:
        w.grad = b.grad = None
        loss = F.cross_entropy(torch.addmm(b, xs, w), y) + 0.5 * l2 * (w * s).pow(2).sum()
        if not torch.isfinite(loss):
            raise UserError(f"lbfgs: non-finite loss at l2={l2:g}; check the features for NaN/inf")
        loss.backward()
        return loss

    tolerance = cfg.tolerance_grad
    if relative_tolerance is not None:
        objective()
        tolerance = max(tolerance, relative_tolerance * float(torch.maximum(w.grad.abs().max(), b.grad.abs().max())))
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=cfg.history_size,
                            tolerance_grad=tolerance, tolerance_change=cfg.tolerance_change,
                            line_search_fn="strong_wolfe")
    opt.step(objective)
    return (w * s).detach(), b.detach(), int(opt.state[w].get("n_iter", 0))


def principal_basis(xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors (columns) and eigenvalues of the features' second-moment matrix.

    Rotating the features by an orthogonal basis leaves the L2-penalised problem unchanged (the same
    minimiser, rotated); in this basis a diagonal preconditioner matches the problem's curvature.
    """
    evals, basis = torch.linalg.eigh((xs.T @ xs).div_(len(xs)))
    return basis, evals.clamp_min(0)


@SOLVERS.register("lbfgs")
def fit_lbfgs(x: Array, y: Array, *, num_classes: int, seed: int, device: torch.device | str = "cpu",
              settings: SolverSettings = SolverSettings()) -> LinearClassifier:
    """L2 chosen on a validation split (warm-started grid), then refit on all of (x, y)."""
    cfg = settings.probe
    y_np = check_labels(y, num_classes)
    xt, yt = as_tensor(x, device), torch.as_tensor(y_np, device=device)
    if not bool(torch.isfinite(xt).all()):
        raise UserError("lbfgs: the features hold non-finite values (NaN/inf); re-extract them "
                        "(delete the cache entry) or check the checkpoint")
    mean, scale = standardizer(xt) if cfg.standardize else (xt.new_zeros(xt.shape[1]), xt.new_ones(xt.shape[1]))
    xs = (xt - mean) / scale
    rotation, curvature = principal_basis(xs) if cfg.precondition else (None, None)
    if rotation is not None:
        xs = xs @ rotation
        curvature = curvature / num_classes  # ~ the CE Hessian's diagonal in this basis (softmax ~ 1/classes)

    def precondition(l2: float) -> torch.Tensor | None:
        return (curvature + l2).rsqrt() if curvature is not None else None

    fit_idx, val_idx = (torch.as_tensor(i, device=device) for i in stratified_split(y_np, cfg.val_fraction, seed))
    x_fit, y_fit, x_val, y_val = xs[fit_idx], yt[fit_idx], xs[val_idx], yt[val_idx]
    iterations: list[int] = []

    def fit(l2: float, init):
        w, b, n = fit_multinomial(x_fit, y_fit, num_classes=num_classes, l2=l2, max_iter=cfg.search_max_iter,
                                  cfg=cfg, relative_tolerance=cfg.search_relative_tolerance,
                                  precondition=precondition(l2), init=init)
        iterations.append(n)
        return w, b

    def evaluate(state) -> dict:
        with torch.no_grad():
            logits = torch.addmm(state[1], x_val, state[0])
            return {"acc": float((logits.argmax(1) == y_val).float().mean()),
                    "loss": float(F.cross_entropy(logits, y_val))}

    best_l2, best_state, scores = search_l2(cfg.l2_grid, fit=fit, evaluate=evaluate, patience=cfg.patience)
    del x_fit, x_val
    w, b, n = fit_multinomial(xs, yt, num_classes=num_classes, l2=best_l2, max_iter=cfg.max_iter, cfg=cfg,
                              precondition=precondition(best_l2), init=best_state)
    if rotation is not None:
        w = rotation @ w
    info = {"solver": "lbfgs", "l2": best_l2, "sklearn_C": 1.0 / (best_l2 * len(y_np)), "grid": scores,
            "iterations": iterations + [n], "train_size": len(y_np), "val_size": len(val_idx)}
    return LinearClassifier(weight=w.T.contiguous(), bias=b, mean=mean, scale=scale, info=info)


# The reference solvers register themselves on import.
from utils import linear_baselines  # noqa: E402,F401  isort: skip
