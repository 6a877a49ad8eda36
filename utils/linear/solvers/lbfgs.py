"""lbfgs: full-batch multinomial logistic regression in torch (L-BFGS, float32, standardised features,
optimised in the features' principal basis with a diagonal preconditioner). The L2 strength is chosen on
a seeded stratified validation split carved from the training set (a log grid walked strongest-first with
warm starts), then the classifier is refit on all training data.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.errors import UserError
from utils.linear.solvers.base import (
    SOLVERS,
    Array,
    LinearClassifier,
    LinearProbeConfig,
    SolverSettings,
    as_tensor,
    check_labels,
    search_l2,
    standardizer,
    stratified_split,
)


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
    x_fit = x_val = None        # the search is over: free its split (the closures above are done with it)
    w, b, n = fit_multinomial(xs, yt, num_classes=num_classes, l2=best_l2, max_iter=cfg.max_iter, cfg=cfg,
                              precondition=precondition(best_l2), init=best_state)
    if rotation is not None:
        w = rotation @ w
    info = {"solver": "lbfgs", "l2": best_l2, "sklearn_C": 1.0 / (best_l2 * len(y_np)), "grid": scores,
            "iterations": iterations + [n], "train_size": len(y_np), "val_size": len(val_idx)}
    return LinearClassifier(weight=w.T.contiguous(), bias=b, mean=mean, scale=scale, info=info)
