"""What every linear solver shares: its settings, the classifier it returns, the registry, common steps.

Solvers are pure functions (features, labels, num_classes, seed, device, settings) -> LinearClassifier,
registered in `SOLVERS`. No solver ever sees the test set. The objective of lbfgs/sklearn is mean
cross-entropy + l2/2 * ||W||^2 (bias unpenalised), i.e. scikit-learn's C = 1 / (l2 * n_samples).
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
