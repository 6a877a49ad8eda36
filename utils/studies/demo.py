"""`make demo`: the study in miniature (configs/studies/demo.yaml), on real data that ships offline.

A dense small ResNet trained on Fashion-MNIST is the upstream model; GMP, AC/DC and one-shot magnitude
pruning make sparse versions at 80/90/95%; each is transferred (full and linear) to scikit-learn's digits
and to generated shapes with 2 seeds; the sweep writes the paper-style report. Finished cells are reused,
so a second run takes seconds. Run it with `python -m utils.studies` (what `make demo` does).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from utils.paths import STUDY_DIR

DEMO_STUDY = STUDY_DIR / "demo.yaml"


def side_by_side(results_csv: Path) -> pd.DataFrame:
    """Rows model@sparsity; columns dataset x mode (mean test accuracy over seeds, %), plus measured sparsity."""
    df = pd.read_csv(results_csv)
    df = df.drop_duplicates(subset=["dset", "model", "sparsity", "seed", "finetuning"], keep="last")
    if "task" in df.columns:          # a detector's score is its mAP@0.5:0.95
        df["val_acc"] = df["val_acc"].where(df["task"] != "detection", df["map"])
    acc = df.pivot_table(index=["model", "sparsity"], columns=["dset", "finetuning"], values="val_acc",
                         aggfunc="mean") * 100
    acc.columns = [f"{d} {m}" for d, m in acc.columns]
    acc["measured sparsity"] = df.groupby(["model", "sparsity"])["measured_sparsity"].mean()
    order = sorted(acc.index, key=lambda ms: (ms[0] != "Dense", ms[1], ms[0]))
    return acc.loc[order]


def format_table(table: pd.DataFrame) -> str:
    """The side-by-side table as fixed-width text."""
    cols = list(table.columns)
    lines = [f"{'model':<10} {'sparsity':>8}  " + "  ".join(f"{c:>14}" for c in cols)]
    for (model, sparsity), row in table.iterrows():
        cells = [f"{row[c]:>14.4f}" if c == "measured sparsity" else f"{row[c]:>14.1f}" for c in cols]
        lines.append(f"{model:<10} {sparsity:>8.2f}  " + "  ".join(cells))
    lines.append("(test top-1 % -- for detection datasets COCO mAP@0.5:0.95 % --, mean over seeds; 'measured "
                 "sparsity' is the fine-tuned models' zeros, classifier excluded)")
    return "\n".join(lines)
