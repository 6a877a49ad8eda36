"""`make demo`: the study's core path in miniature, on real data that ships offline.

Upstream: a small dense ResNet trained on Fashion-MNIST; sparse upstream versions by one-shot
magnitude pruning; then full fine-tuning of dense and sparse models on scikit-learn's digits with
the masks fixed. Finished steps are reused, so a second run takes seconds.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from utils.errors import exit_on_user_error
from utils.experiment import RunOptions
from utils.finetune import run_full_finetuning
from utils.prune import prune_checkpoint

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SPARSITIES = (0.8, 0.9)
log = logging.getLogger("demo")


def train_upstream(root: Path, *, workers: int) -> Path:
    """Dense resnet_small on a 12k-image Fashion-MNIST subset; returns its native checkpoint."""
    opts = RunOptions(dset="fashion_mnist", arch="resnet_small", config_path=str(CONFIGS / "trainers/demo_upstream.yaml"),
                      experiment_root_path=str(root / "upstream"), exp_name="dense", manual_seed=0,
                      max_train_samples=12000, workers=workers, resume=True, model_label="Dense")
    result = run_full_finetuning(opts)
    log.info("upstream Fashion-MNIST test accuracy: %.4f", result["val_acc"])
    return Path(result["run_dir"]) / "model.pt"


def make_sparse(dense: Path, sparsity: float) -> Path:
    out = dense.parent.parent / f"magnitude_{int(sparsity * 100)}.pt"
    if not out.exists():
        prune_checkpoint(dense, out, sparsity=sparsity)
    return out


def finetune(root: Path, checkpoint: Path, *, label: str, sparsity: float, seed: int, workers: int) -> dict:
    opts = RunOptions(dset="digits", from_checkpoint_path=str(checkpoint),
                      config_path=str(CONFIGS / "trainers/demo_finetune.yaml"),
                      experiment_root_path=str(root / "transfer"), exp_name=f"digits_{checkpoint.stem}_seed{seed}",
                      manual_seed=seed, workers=workers, resume=True, model_label=label, sparsity_label=sparsity)
    return run_full_finetuning(opts)


def print_table(results: list[dict], root: Path) -> None:
    print("\nFull fine-tuning on scikit-learn digits (upstream: Fashion-MNIST)")
    print(f"{'model':<10} {'sparsity':>8} {'seed':>4} {'test acc':>9} {'measured sparsity':>18}")
    for r in results:
        print(f"{r['model']:<10} {r['sparsity']:>8.2f} {r['seed']:>4} {r['val_acc']:>9.4f} {r['measured_sparsity']:>18.4f}")
    print(f"\nresults: {root / 'transfer' / 'results.csv'}\nrun directories: {root / 'transfer'}")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default="experiments/demo", help="where the demo writes everything")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    root = Path(args.root)
    dense = train_upstream(root, workers=args.workers)
    runs = [("Dense", 0.0, dense)] + [("Magnitude", s, make_sparse(dense, s)) for s in SPARSITIES]
    results = [finetune(root, ckpt, label=label, sparsity=s, seed=args.seed, workers=args.workers)
               for label, s, ckpt in runs]
    print_table(results, root)
    print(f"demo took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
