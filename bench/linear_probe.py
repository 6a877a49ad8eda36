"""Linear-probe solvers on the same cached features: fit time and test accuracy, as ratios from one run.

    python bench/linear_probe.py                       # synthetic: 10,000 train / 5,000 test, 2048-d, 100 classes
    python bench/linear_probe.py --train DIR --test DIR  # real entries from finetune_pre_extracted_features.py

Solvers: lbfgs (ours: torch, float32, warm-started L2 grid on a validation split, refit), sklearn
(the same protocol with scikit-learn's LogisticRegression, float64, a fresh fit per grid value) and sgd
(the study's protocol: 150 epochs of SGD, configs/trainers/study_linear_sgd.yaml). Synthetic features
are nonnegative with a power-law covariance spectrum (like pooled CNN features), written to a features
cache entry and read back, so every solver sees the same bytes.
Target: lbfgs >= 10x faster than sklearn at equal or better test accuracy (within 0.5 points).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from policies.trainer import TrainerConfig  # noqa: E402
from utils.cli import setup_logging  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.linear import SOLVERS, LinearProbeConfig, SolverSettings, read_entry, score  # noqa: E402


def synthetic_features(n: int, *, dim: int, classes: int, spread: float, seed: int, split_seed: int):
    """Pooled-CNN-like features: ReLU of class means plus noise along a power-law spectrum (k^-1.2)."""
    rng = np.random.default_rng(seed)
    scales = ((1.0 + np.arange(dim)) ** -0.6).astype(np.float32)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)
    means = rng.normal(size=(classes, dim)).astype(np.float32) * scales * spread
    draw = np.random.default_rng(split_seed)
    y = draw.integers(0, classes, n)
    h = means[y] + draw.normal(size=(n, dim)).astype(np.float32) * scales
    x = np.maximum(h @ basis * 8.0 + 0.5 + 0.05 * draw.normal(size=(n, dim)).astype(np.float32), 0.0)
    return x.astype(np.float32), y.astype(np.int64)


def write_entry(path: Path, x: np.ndarray, y: np.ndarray, meta: dict) -> Path:
    """A features-cache entry (features.npy, labels.npy, meta.json) as utils.linear.features writes them."""
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "features.npy", x)
    np.save(path / "labels.npy", y)
    (path / "meta.json").write_text(json.dumps({**meta, "key": "bench", "count": len(y), "dim": x.shape[1]}))
    return path


def load_entry(path: Path):
    meta = json.loads((path / "meta.json").read_text())
    entry = read_entry(path, meta["key"])
    if entry is None:
        raise SystemExit(f"{path}: not a complete features-cache entry")
    return entry.features, entry.labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, help="a cached train-split entry (default: synthetic)")
    p.add_argument("--test", type=Path, help="the matching test-split entry")
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--test_samples", type=int, default=5000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--spread", type=float, default=0.15, help="class separation of the synthetic features")
    p.add_argument("--solvers", nargs="+", default=["lbfgs", "sklearn", "sgd"])
    p.add_argument("--device", default="cpu", help="torch solvers' device (sklearn always runs on the CPU)")
    p.add_argument("--probe_config", default=str(REPO / "configs/probes/lbfgs.yaml"))
    p.add_argument("--trainer_config", default=str(REPO / "configs/trainers/study_linear_sgd.yaml"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    setup_logging(quiet=True)

    with tempfile.TemporaryDirectory() as tmp:
        if args.train:
            train_dir, test_dir = args.train, args.test or args.train.parent / args.train.name.replace("train", "test")
        else:
            kw = dict(dim=args.dim, classes=args.classes, spread=args.spread, seed=args.seed)
            train_dir = write_entry(Path(tmp) / "train", *synthetic_features(args.samples, split_seed=1, **kw), kw)
            test_dir = write_entry(Path(tmp) / "test", *synthetic_features(args.test_samples, split_seed=2, **kw), kw)
        x, y = load_entry(train_dir)
        xt, yt = load_entry(test_dir)
        num_classes = int(max(y.max(), yt.max())) + 1
        print(f"features: {len(y)} train / {len(yt)} test, {x.shape[1]}-d, {num_classes} classes; "
              f"torch threads {torch.get_num_threads()}, device {args.device}")
        settings = SolverSettings(probe=load_config(args.probe_config, LinearProbeConfig),
                                  trainer=load_config(args.trainer_config, TrainerConfig))
        results = {}
        for name in args.solvers:
            start = time.perf_counter()
            clf = SOLVERS.get(name)(x, y, num_classes=num_classes, seed=args.seed, device=args.device,
                                    settings=settings)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            results[name] = (seconds, score(clf, xt, yt)["acc"], clf.info)
            its = clf.info.get("iterations", clf.info.get("steps"))
            print(f"{name:8s} fit {seconds:8.2f} s   test acc {results[name][1]:.4f}   "
                  f"l2 {clf.info.get('l2', '-')}   iterations {its}", flush=True)

    if "lbfgs" in results:
        base_s, base_acc, _ = results["lbfgs"]
        for name, (seconds, acc, _) in results.items():
            if name != "lbfgs":
                print(f"lbfgs vs {name}: {seconds / base_s:.1f}x faster, "
                      f"test accuracy {100 * (base_acc - acc):+.2f} points")
        if "sklearn" in results:
            sk_s, sk_acc, _ = results["sklearn"]
            met = sk_s / base_s >= 10 and base_acc >= sk_acc - 0.005
            print(f"target (>= 10x faster than sklearn, accuracy within 0.5 points): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
