"""Runs: one module per run kind, the `RUNS` registry they are launched through, run directories, typed results.

    from utils.runs import RUNS
    kind = RUNS.get("linear")
    result = kind.run(kind.options(dataset="dtd", dataset_path="/data/dtd", from_checkpoint_path="acdc_90.pth"))
    result.val_acc, result.run_dir
"""
from pathlib import Path

from utils.runs.full import run_full_finetuning
from utils.runs.kinds import RESULT_COLUMNS, RUNS, InputSettings, ResultRow, RunKind, RunResult
from utils.runs.linear import run_linear_finetuning
from utils.runs.options import FullOptions, LinearOptions, RunOptions, TransferConfig
from utils.runs.plan import checkpoint_label

RUNS.add("full", RunKind("full", FullOptions, run_full_finetuning))
RUNS.add("linear", RunKind("linear", LinearOptions, run_linear_finetuning,
                           cell_defaults=lambda root: {"features_cache": str(Path(root) / "features_cache")}))

__all__ = ["RESULT_COLUMNS", "RUNS", "FullOptions", "InputSettings", "LinearOptions", "ResultRow", "RunKind",
           "RunOptions", "RunResult", "TransferConfig", "checkpoint_label", "run_full_finetuning",
           "run_linear_finetuning"]
