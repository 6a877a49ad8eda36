"""Run directories: resolved config, git commit, result.json, and the shared results.csv."""
from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import torch

from utils.config import dump_yaml, read_yaml
from utils.errors import UserError
from utils.io import append_csv_row, atomic_write_json, atomic_write_text
from utils.paths import REPO_ROOT
from utils.runs.kinds import RunResult

# The raw_results schema first (dset,model,sparsity,seed,val_acc), then descriptive columns.
RESULT_COLUMNS = [
    "dset", "model", "sparsity", "seed", "val_acc",
    "finetuning", "arch", "checkpoint", "flavour", "recipe", "solver", "lr", "epochs", "batch_size",
    "measured_sparsity", "run_dir", "git_commit", "finished_at",
]


def git_commit() -> str:
    """HEAD of this repository, with `-dirty` when tracked files changed; `unknown` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def prepare_run_dir(run_dir: Path, *, resume: bool) -> str:
    """Decide what to do with a run directory: 'new', 'resume' or 'finished'.

    A finished or started run is never overwritten by accident.
    """
    if (run_dir / "result.json").exists():
        if resume:
            return "finished"
        raise UserError(f"{run_dir} already holds a finished run (result.json); pass --resume to reuse it, "
                        "or choose another --exp_name")
    if (run_dir / "checkpoint.pt").exists():
        if resume:
            return "resume"
        raise UserError(f"{run_dir} holds an unfinished run (checkpoint.pt); pass --resume to continue it, "
                        "or choose another --exp_name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return "new"


def write_run_config(run_dir: Path, config: dict[str, Any], *, check_existing: bool) -> None:
    """Write config.yaml; when resuming, refuse a config that differs from the saved one."""
    config = json.loads(json.dumps(config, default=str))  # plain YAML types only (tuples, versions...)
    path = run_dir / "config.yaml"
    if check_existing and path.exists():
        saved = read_yaml(path) or {}
        keys = sorted(k for k in set(saved) | set(config)
                      if k not in ("git_commit", "resumed") and saved.get(k) != config.get(k))
        if keys:
            raise UserError(f"{path}: cannot resume with a different configuration (differs in {keys[:5]}); "
                            "rerun with the original flags or use another --exp_name")
    atomic_write_text(path, dump_yaml(config))


def environment_info() -> dict[str, Any]:
    return {"git_commit": git_commit(), "torch": str(torch.__version__),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None}


def finished_result(run_dir: Path, experiment_root: Path) -> RunResult:
    """A finished run's result; re-appends its results.csv row if a crash came between the two writes."""
    record = json.loads((run_dir / "result.json").read_text())
    table = experiment_root / "results.csv"
    rows = list(csv.DictReader(table.open())) if table.exists() else []
    if not any(r.get("run_dir") == str(run_dir) for r in rows):
        append_csv_row(table, {col: record.get(col, "") for col in RESULT_COLUMNS})
    return RunResult.from_record(record, run_dir)


def record_result(run_dir: Path, experiment_root: Path, record: dict[str, Any]) -> None:
    """Write result.json, then append its row to <experiment_root>/results.csv."""
    atomic_write_json(run_dir / "result.json", record)
    row = {col: record.get(col, "") for col in RESULT_COLUMNS}
    append_csv_row(experiment_root / "results.csv", row)
