"""`make demo`: the study in miniature (configs/studies/demo.yaml), on real data that ships offline.

A dense small ResNet trained on Fashion-MNIST is the upstream model; GMP, AC/DC and one-shot magnitude
pruning make sparse versions at 80/90/95%; each is transferred (full and linear) to scikit-learn's digits
and to generated shapes with 2 seeds; the sweep writes the paper-style report. Finished cells are reused,
so a second run takes seconds.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

from utils.errors import exit_on_user_error
from utils.study import load_study
from utils.sweep import run_study

STUDY = Path(__file__).resolve().parent.parent / "configs" / "studies" / "demo.yaml"


def side_by_side(results_csv: Path) -> pd.DataFrame:
    """Rows model@sparsity; columns dataset x mode (mean test accuracy over seeds, %), plus measured sparsity."""
    df = pd.read_csv(results_csv)
    df = df.drop_duplicates(subset=["dset", "model", "sparsity", "seed", "finetuning"], keep="last")
    acc = df.pivot_table(index=["model", "sparsity"], columns=["dset", "finetuning"], values="val_acc",
                         aggfunc="mean") * 100
    acc.columns = [f"{d} {m}" for d, m in acc.columns]
    acc["measured sparsity"] = df.groupby(["model", "sparsity"])["measured_sparsity"].mean()
    order = sorted(acc.index, key=lambda ms: (ms[0] != "Dense", ms[1], ms[0]))
    return acc.loc[order]


def print_table(table: pd.DataFrame) -> None:
    cols = list(table.columns)
    print(f"\n{'model':<10} {'sparsity':>8}  " + "  ".join(f"{c:>14}" for c in cols))
    for (model, sparsity), row in table.iterrows():
        cells = [f"{row[c]:>14.4f}" if c == "measured sparsity" else f"{row[c]:>14.1f}" for c in cols]
        print(f"{model:<10} {sparsity:>8.2f}  " + "  ".join(cells))
    print("(test top-1 %, mean over seeds; 'measured sparsity' is the fine-tuned models' zeros, classifier excluded)")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--study", default=str(STUDY), help="the study file to run")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    run_study(args.study, jobs=args.jobs)
    root = Path(load_study(args.study).experiment_root)
    print("\nFull and linear transfer from Fashion-MNIST (upstream) to digits and shapes:")
    print_table(side_by_side(root / "results.csv"))
    print(f"\nresults: {root / 'results.csv'}\nreport:  {root / 'report' / 'report.md'}")
    print(f"demo took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
