"""Run directories: resolved config, git commit, result.json, and the shared results.csv."""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import logging
import subprocess
import typing
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from policies.trainer import TrainerConfig
from utils.config import dump_yaml, read_yaml
from utils.distributed import is_main_process
from utils.errors import UserError
from utils.io import (
    append_csv_row,
    atomic_write_json,
    atomic_write_text,
    edit_csv_rows,
    exclusive_lock,
    set_aside_ragged_rows,
)
from utils.linear import LinearProbeConfig
from utils.paths import REPO_ROOT
from utils.runs.kinds import RESULT_COLUMNS, RunResult
from utils.runs.options import FullOptions, LinearOptions, TransferConfig

log = logging.getLogger(__name__)

# Added later: a table written before them takes rows without them (result.json keeps everything); a detector's
# row needs the detection ones, so a detection run refuses such a table up front.
DETECTION_COLUMNS = ["task", "map", "map50"]
OPTIONAL_COLUMNS = [*DETECTION_COLUMNS, "precision"]


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


def run_dir_for(experiment_root: str | Path, exp_name: str) -> Path:
    """<experiment_root>/<exp_name>; a name that would leave the root is refused."""
    name = Path(exp_name)
    if name.is_absolute() or ".." in name.parts or not name.parts:
        raise UserError(f"--exp_name {exp_name!r} must be a name inside --experiment_root_path (no '..', not absolute)")
    return Path(experiment_root).absolute() / name     # absolute: results record where the run is


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Exclusive use of a run directory for this process (the main one under torchrun).

    A run that stops before writing anything (a bad input found after the lock was taken) leaves no
    directory behind.
    """
    if not is_main_process():
        yield
        return
    existed = run_dir.exists()
    with exclusive_lock(run_dir / ".lock", what=f"run directory {run_dir}"):
        try:
            yield
        finally:
            if not existed and [p.name for p in run_dir.iterdir()] == [".lock"]:
                (run_dir / ".lock").unlink()
                run_dir.rmdir()


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


def check_same_settings(run_dir: Path, sections: dict[str, Any]) -> None:
    """--resume of a finished run reports its result only for the settings it was made with: `sections`
    (e.g. the options and the trainer config) must match its config.yaml, else reporting it would
    label an old result with new settings."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    saved = comparable(read_yaml(path) or {})
    now = comparable(json.loads(json.dumps(sections, default=str)))
    keys = sorted(f"{section}.{k}" for section, values in now.items() if isinstance(values, dict)
                  for k in set(values) | set(saved.get(section) or {})
                  if values.get(k) != (saved.get(section) or {}).get(k))
    if keys:
        raise UserError(f"{run_dir} holds a finished run made with other settings (differs in {keys[:5]}); "
                        "rerun with its original flags to report it, or choose another --exp_name")


def write_run_config(run_dir: Path, config: dict[str, Any], *, check_existing: bool) -> None:
    """Write config.yaml; when resuming, refuse a config that differs from the saved one."""
    config = json.loads(json.dumps(config, default=str))  # plain YAML types only (tuples, versions...)
    path = run_dir / "config.yaml"
    if check_existing and path.exists():
        saved, now = comparable(read_yaml(path) or {}), comparable(config)
        for section, names in RECORDED_LATER.items():   # a run recorded before they were is checked without them
            for name in names:
                if name not in (saved.get(section) or {}) and isinstance(now.get(section), dict):
                    now[section] = {k: v for k, v in now[section].items() if k != name}
        keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if keys:
            raise UserError(f"{path}: cannot resume with a different configuration (differs in {keys[:5]}); "
                            "rerun with the original flags or use another --exp_name")
    atomic_write_text(path, dump_yaml(config))


# What config.yaml records beyond the user's settings, added since runs were first recorded (section -> keys).
RECORDED_LATER = {"dataset": ("content",)}

# Where and how fast a run goes and who watches it, not what it computes: a resumed run may change them
# (e.g. a moved root, or wandb switched on).
LOCATION_OPTIONS = ("experiment_root_path", "workers", "progress", "resume",
                    "use_wandb", "wandb_project", "wandb_group", "wandb_name")


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config without what a resume may change, and without the keys of its sections that hold their
    field's default, at any depth (a trainer config's `schedule` too): a run recorded before a field existed
    compares equal to the same run now."""
    out = {k: v for k, v in config.items() if k not in ("git_commit", "resumed")}
    if isinstance(out.get("options"), dict):
        out["options"] = {k: v for k, v in out["options"].items() if k not in LOCATION_OPTIONS}
    for section, models in SECTION_MODELS.items():
        if isinstance(out.get(section), dict):
            out[section] = without_defaults(out[section], models)
    return out


SECTION_MODELS: dict[str, tuple[type[BaseModel], ...]] = {
    "options": (FullOptions, LinearOptions), "trainer": (TrainerConfig,), "transfer": (TransferConfig,),
    "probe": (LinearProbeConfig,)}


def without_defaults(values: dict[str, Any], models: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    """`values` (a section as config.yaml writes it) less each key that holds its field's default; a field that is
    itself a model (or an optional one) is compared key by key, so a field added to it later changes nothing."""
    out = {}
    for key, value in values.items():
        field = next((m.model_fields[key] for m in models if key in m.model_fields), None)
        if field is None:
            out[key] = value
            continue
        nested = _nested_model(field.annotation)
        if nested is not None and isinstance(value, dict):
            value = without_defaults(value, (nested,))
        if not field.is_required() and value == _default_as_written(field, nested):
            continue
        out[key] = value
    return out


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model class a field holds (`Model`, `Model | None`), else None."""
    candidates = typing.get_args(annotation) or (annotation,)
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return models[0] if len(models) == 1 else None


def _default_as_written(field: Any, nested: type[BaseModel] | None) -> Any:
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        plain = json.loads(json.dumps(default.model_dump(), default=str))
        return without_defaults(plain, (nested or type(default),))
    return json.loads(json.dumps(default, default=str))


def environment_info() -> dict[str, Any]:
    return {"git_commit": git_commit(), "torch": str(torch.__version__),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None}


def check_results_table(experiment_root: Path, *, extra_columns: bool = False) -> None:
    """Fail before training if <experiment_root>/results.csv could not take this run's row."""
    table = Path(experiment_root) / "results.csv"
    if not table.exists():
        return
    try:
        header = next(csv.reader(table.read_text(encoding="utf-8").splitlines()), None)
    except UnicodeDecodeError as err:
        raise UserError(f"{table}: not valid UTF-8 text (byte {err.start}); move it aside or choose another "
                        "--experiment_root_path") from None
    missing = [c for c in RESULT_COLUMNS if c not in (header or [])
               and (c not in OPTIONAL_COLUMNS or (extra_columns and c in DETECTION_COLUMNS))]
    if header and missing:
        raise UserError(f"{table}: its header lacks the columns {missing[:5]} this run writes; move it aside or "
                        "choose another --experiment_root_path")
    aside = table.with_name(table.name + ".damaged")
    for line, fields, expected in set_aside_ragged_rows(table, aside):
        log.warning("%s:%d: a cut-off row (%d of %d fields; a run killed while writing it?) moved to %s, so the "
                    "table stays readable; a finished run's row comes back when it is run again with --resume",
                    table, line, fields, expected, aside)


def already_finished(run_dir: Path, experiment_root: Path, settings: dict[str, Any]) -> RunResult:
    """A finished run's result (either kind), once its recorded `settings` are checked to be these."""
    check_same_settings(run_dir, settings)
    log.info("%s is already finished; reporting its result", run_dir)
    return finished_result(run_dir, experiment_root)


def finished_result(run_dir: Path, experiment_root: Path) -> RunResult:
    """A finished run's result; re-appends its results.csv row if a crash came between the two writes, and records
    where the run is now (absolute) in its row and result.json when it was moved or copied since."""
    record = json.loads((run_dir / "result.json").read_text())
    here = str(Path(run_dir).absolute())
    table = experiment_root / "results.csv"
    rows = list(csv.DictReader(table.open())) if table.exists() else []
    mine = [r for r in rows if same_run(r, record, run_dir=run_dir, experiment_root=experiment_root)]
    if record.get("run_dir", here) != here:
        log.info("%s was moved or copied from %s; its result now records where it is", here, record["run_dir"])
        record["run_dir"] = here
        atomic_write_json(run_dir / "result.json", record)
    if not mine:
        append_csv_row(table, {**{col: record.get(col, "") for col in RESULT_COLUMNS}, "run_dir": here},
                       optional=OPTIONAL_COLUMNS)
    elif any(r.get("run_dir") != here for r in mine):
        edit_csv_rows(table, lambda r: {**r, "run_dir": here}
                      if same_run(r, record, run_dir=run_dir, experiment_root=experiment_root) else r)
    return RunResult.from_record(record, run_dir)


def same_run(row: dict[str, str], record: dict[str, Any], *, run_dir: Path, experiment_root: Path) -> bool:
    """Is `row` this finished run's? Its name under the experiment root and its finish time, not the path string
    (the root may be spelt another way, moved or copied)."""
    try:
        name = run_dir.resolve().relative_to(experiment_root.resolve()).parts
    except ValueError:
        name = run_dir.parts[-1:]
    recorded = Path(row.get("run_dir") or "").parts
    return row.get("finished_at") == str(record.get("finished_at")) and tuple(recorded[-len(name):]) == name


def record_result(run_dir: Path, experiment_root: Path, record: dict[str, Any]) -> None:
    """Write result.json, then append its row to <experiment_root>/results.csv."""
    atomic_write_json(run_dir / "result.json", record)
    row = {col: record.get(col, "") for col in RESULT_COLUMNS}
    append_csv_row(experiment_root / "results.csv", row, optional=OPTIONAL_COLUMNS)
