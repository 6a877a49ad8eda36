"""Linear-probe solvers: accuracy on separable data, the L2 search, the objective, the SGD protocol."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from policies.trainer import TrainerConfig
from utils.errors import UserError
from utils.linear.solvers import (
    SOLVERS,
    LinearProbeConfig,
    SolverSettings,
    fit_lbfgs,
    fit_sklearn,
    score,
    search_l2,
    stratified_split,
)

SGD_PROTOCOL = TrainerConfig.model_validate({
    "epochs": 12, "batch_size": 16,
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005},
    "schedule": {"name": "step", "milestones_epochs": [4, 8], "gamma": 0.1},
})


def blobs(n_per_class: int, *, classes: int = 4, dim: int = 16, sep: float = 6.0, seed: int = 0):
    """Well-separated Gaussian blobs with nonnegative, unevenly scaled features (like pooled ReLUs)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)) * sep
    y = np.repeat(np.arange(classes), n_per_class)
    x = centers[y] + rng.normal(size=(len(y), dim))
    x = (x - x.min()) * np.linspace(0.2, 3.0, dim)
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order]


@pytest.mark.parametrize("solver", SOLVERS.names())
def test_every_solver_separates_separable_blobs(solver):
    x_all, y_all = blobs(60)
    x, y, xt, yt = x_all[:160], y_all[:160], x_all[160:], y_all[160:]
    settings = SolverSettings(trainer=SGD_PROTOCOL)
    clf = SOLVERS.get(solver)(x, y, num_classes=4, seed=0, settings=settings)
    assert score(clf, x, y)["acc"] == 1.0
    assert score(clf, xt, yt)["acc"] >= 0.97
    assert clf.info["solver"] == solver


def test_lbfgs_and_sklearn_minimise_the_same_objective():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = (x[:, :3] @ rng.normal(size=(3, 3)) + rng.normal(size=(300, 3))).argmax(1)
    probe = LinearProbeConfig(l2_grid=[0.01], tolerance_grad=1e-7, tolerance_change=1e-12, max_iter=500,
                              search_max_iter=500)
    ours = fit_lbfgs(x, y, num_classes=3, seed=0, settings=SolverSettings(probe=probe))
    ref = fit_sklearn(x, y, num_classes=3, seed=0, settings=SolverSettings(probe=probe))
    # Softmax weights are defined up to a per-feature shift across classes; compare centred weights.
    centred = [c.weight - c.weight.mean(0) for c in (ours, ref)]
    assert torch.allclose(centred[0], centred[1], atol=2e-3)
    assert torch.allclose(ours.logits(x).softmax(1), ref.logits(x).softmax(1), atol=1e-3)
    assert ours.info["l2"] == ref.info["l2"] == 0.01


def test_l2_search_picks_the_known_best_value_and_warm_starts():
    accuracy = {1.0: 0.5, 0.1: 0.7, 0.01: 0.9, 0.001: 0.8, 1e-4: 0.6, 1e-5: 0.95}
    inits = []

    def fit(l2, init):
        inits.append(init)
        return l2

    best, state, scores = search_l2(sorted(accuracy, reverse=True), fit=fit,
                                    evaluate=lambda l2: {"acc": accuracy[l2], "loss": 1 - accuracy[l2]}, patience=2)
    assert best == 0.01 and state == 0.01
    assert [s["l2"] for s in scores] == [1.0, 0.1, 0.01, 0.001, 1e-4]  # stopped after two worse values
    assert inits == [None, 1.0, 0.1, 0.01, 0.001]  # each fit starts from the previous solution
    best, _, _ = search_l2(sorted(accuracy, reverse=True), fit=fit,
                           evaluate=lambda l2: {"acc": accuracy[l2], "loss": 0.0}, patience=None)
    assert best == 1e-5


def test_l2_grid_rejects_collapsing_regularisation_on_a_constructed_problem():
    # 70/30 classes, separable: a huge L2 shrinks W to ~0 and leaves only the (unpenalised) bias, which
    # predicts the majority class (validation accuracy 0.7); a small L2 separates (1.0).
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(int)
    x = (rng.normal(size=(400, 5)) + 4.0 * y[:, None]).astype(np.float32)
    probe = LinearProbeConfig(l2_grid=[1e4, 1e3, 1e-3], patience=None)
    for fit in (fit_lbfgs, fit_sklearn):
        clf = fit(x, y, num_classes=2, seed=1, settings=SolverSettings(probe=probe))
        grid = {s["l2"]: s["acc"] for s in clf.info["grid"]}
        assert grid[1e4] == pytest.approx(0.7, abs=0.05) and grid[1e-3] == 1.0
        assert clf.info["l2"] == 1e-3, fit.__name__


def test_stratified_split_is_seeded_disjoint_and_keeps_singletons_in_train():
    labels = np.array([0] * 10 + [1] * 5 + [2])
    train, val = stratified_split(labels, 0.2, seed=4)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(labels)
    assert sorted(labels[val].tolist()) == [0, 0, 1]
    assert 15 in train  # the only sample of class 2
    again = stratified_split(labels, 0.2, seed=4)
    assert np.array_equal(again[1], val)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=5)[1], val)
    with pytest.raises(UserError, match="validation split"):
        stratified_split(np.array([0, 1, 2]), 0.2, seed=0)


def test_folded_linear_head_matches_the_standardised_classifier():
    x, y = blobs(30)
    clf = fit_lbfgs(x, y, num_classes=4, seed=0)
    head = clf.to_linear()
    with torch.no_grad():
        assert torch.allclose(head(torch.as_tensor(x)), clf.logits(x), atol=1e-3)


def test_sgd_follows_the_trainer_schedule_and_is_seeded():
    x, y = blobs(20)
    seen = []
    settings = SolverSettings(trainer=SGD_PROTOCOL, on_epoch_end=lambda e, m, c: seen.append((e, m["lr"])))
    a = SOLVERS.get("sgd")(x, y, num_classes=4, seed=7, settings=settings)
    b = SOLVERS.get("sgd")(x, y, num_classes=4, seed=7, settings=SolverSettings(trainer=SGD_PROTOCOL))
    assert [e for e, _ in seen] == list(range(12))
    assert [lr for _, lr in seen] == pytest.approx([0.05] * 4 + [0.005] * 4 + [0.0005] * 4)
    assert torch.equal(a.weight, b.weight) and a.info["steps"] == 12 * 5
    c = SOLVERS.get("sgd")(x, y, num_classes=4, seed=8, settings=SolverSettings(trainer=SGD_PROTOCOL))
    assert not torch.equal(a.weight, c.weight)


def test_solver_errors_are_user_errors():
    x, y = blobs(10)
    with pytest.raises(UserError, match="unknown linear solver"):
        SOLVERS.get("adam")
    with pytest.raises(UserError, match="trainer config"):
        SOLVERS.get("sgd")(x, y, num_classes=4, seed=0, settings=SolverSettings())
    with pytest.raises(UserError, match="labels must lie"):
        fit_lbfgs(x, y, num_classes=3, seed=0)
    with pytest.raises(UserError, match="non-finite values"):
        bad = x.copy()
        bad[0, 0] = np.inf
        fit_lbfgs(bad, y, num_classes=4, seed=0)


def test_preconditioning_changes_the_search_not_the_minimiser():
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(240, 12)) @ np.diag(np.logspace(0, -2, 12))).astype(np.float32)  # ill-conditioned
    y = (x @ rng.normal(size=(12, 3)) * 30 + rng.normal(size=(240, 3))).argmax(1)
    tight = dict(l2_grid=[1e-3], tolerance_grad=1e-7, tolerance_change=1e-12, max_iter=1000, search_max_iter=1000)
    a, b = (fit_lbfgs(x, y, num_classes=3, seed=0, settings=SolverSettings(probe=LinearProbeConfig(
        precondition=p, **tight))) for p in (True, False))
    def objective(c):
        return float(F.cross_entropy(c.logits(x), torch.as_tensor(y)) + 0.5e-3 * c.weight.pow(2).sum())

    assert objective(a) == pytest.approx(objective(b), rel=1e-5)  # float32: the same minimum
    assert torch.allclose(a.logits(x), b.logits(x), atol=1e-2)


@pytest.mark.parametrize("path", sorted(__import__("glob").glob("configs/probes/*.yaml")))
def test_shipped_probe_configs_validate(path):
    from utils.config import load_config

    assert load_config(path, LinearProbeConfig).l2_grid
