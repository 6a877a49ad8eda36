"""Run a study: make its upstream checkpoints, expand the grid, skip finished cells, run the rest, report.

Every cell is a normal run directory under the study's experiment root. A failure is recorded and the
sweep goes on; killing the sweep loses at most the epoch in progress (cells resume from their checkpoint).
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from utils.analysis import combos, load_results, paper_table, score_title, summarize, to_markdown, write_report
from utils.config import validate
from utils.io import exclusive_lock
from utils.runs import RUNS
from utils.studies.cells import Cell, cell_status, expand, read_error
from utils.studies.executors import FairPool, Lane, default_jobs, get_executor, worker_pool
from utils.studies.slurm import active_jobs, recorded_job
from utils.studies.stale import set_aside, stale_cells
from utils.studies.study import Study, load_study
from utils.studies.upstreams import resolve_upstreams

log = logging.getLogger(__name__)


def validate_cells(cells: list[Cell], *, source: str) -> None:
    """Every cell's options must be valid run options: a typo in the study file fails before anything runs."""
    seen: set[str] = set()
    for cell in cells:
        model = RUNS.get(cell.mode).options
        sig = cell.mode + json.dumps(sorted(cell.options), default=str)
        if sig not in seen:
            seen.add(sig)
            validate({**cell.options, "exp_name": cell.name}, model, source=f"{source} ({cell.mode} cell options)")


def run_study(study_path: str | Path, *, executor: str = "local", jobs: int = 1, dry_run: bool = False,
              retry_failed: bool = False, wait: bool = True, report: bool = True, rerun_stale: bool = False,
              progress: Callable[[str], None] = log.info, pool: Executor | Lane | None = None) -> dict[str, int]:
    """The sweep: upstreams, grid, skip done, run the rest, then the report. Returns status counts (and how
    many upstreams are missing, `blocked`). `jobs` 0: `default_jobs()`; `pool`: local workers shared with other
    studies (`run_studies`). One sweep at a time per study root (a dry run needs no lock)."""
    study = load_study(study_path)
    jobs = jobs or default_jobs()
    root = Path(study.experiment_root)
    lock = contextlib.nullcontext() if dry_run else \
        exclusive_lock(root / ".sweep.lock", what=f"study {study.name!r} ({root})")
    with lock:
        return sweep(study, study_path=study_path, executor=executor, jobs=jobs, dry_run=dry_run,
                     retry_failed=retry_failed, wait=wait, report=report, progress=progress, pool=pool,
                     rerun_stale=rerun_stale)


def run_studies(study_paths: list[str | Path], *, jobs: int = 0, progress: Callable[[str], None] = log.info,
                then: Callable[[Path], Any] | None = None, **options) -> dict[str, dict[str, int]]:
    """Several studies at once on one pool of local workers (each study's lines prefixed with its name), so
    one study's long runs and another's short ones fill the cores together; `then(study_path)` runs as soon
    as a study has finished, beside the others. Returns each study's counts; a study that fails raises after
    the others have finished."""
    def one(path: Path, **more: Any) -> dict[str, int]:
        counts = run_study(path, jobs=jobs, **options, **more)
        if then is not None:
            then(path)
        return counts

    if len(study_paths) == 1:
        return {str(study_paths[0]): one(Path(study_paths[0]), progress=progress)}
    jobs = jobs or default_jobs()
    names = {str(p): load_study(p).name for p in study_paths}

    def prefixed(name: str) -> Callable[[str], None]:
        return lambda text: progress("\n".join(f"[{name}] {line}" if line else line for line in text.split("\n")))

    with worker_pool(jobs) as pool, ThreadPoolExecutor(len(study_paths)) as studies:
        fair = FairPool(pool, jobs)
        futures = {str(p): studies.submit(one, Path(p), pool=fair.lane(str(p)), progress=prefixed(names[str(p)]))
                   for p in study_paths}
        return {p: future.result() for p, future in futures.items()}


def sweep(study: Study, *, study_path: str | Path, executor: str, jobs: int, dry_run: bool, retry_failed: bool,
          wait: bool, report: bool, progress: Callable[[str], None], pool: Executor | Lane | None = None,
          rerun_stale: bool = False) -> dict[str, int]:
    own = pool is None and executor == "local" and jobs > 1 and not dry_run
    with worker_pool(jobs) if own else contextlib.nullcontext(pool) as workers:
        return _sweep(study, study_path=study_path, executor=executor, jobs=jobs, dry_run=dry_run,
                      retry_failed=retry_failed, wait=wait, report=report, progress=progress, pool=workers,
                      shared=pool is not None, rerun_stale=rerun_stale)


STATES = ("done", "queued", "running", "todo", "failed")


def _sweep(study: Study, *, study_path: str | Path, executor: str, jobs: int, dry_run: bool, retry_failed: bool,
           wait: bool, report: bool, progress: Callable[[str], None], pool: Executor | Lane | None,
           shared: bool, rerun_stale: bool) -> dict[str, int]:
    run = get_executor(executor)
    start = time.perf_counter()
    paths = resolve_upstreams(study, make=not dry_run, progress=progress, pool=pool,
                              jobs=0 if shared else jobs)
    phases = {"upstreams": time.perf_counter() - start}
    cells, blocked = expand(study, paths)
    validate_cells(cells, source=str(study_path))
    status = cell_states(cells)
    check_stale(cells, status, rerun=rerun_stale and not dry_run, progress=progress)
    counts = {s: sum(v == s for v in status.values()) for s in STATES}
    planned = len(study.upstreams) * len(study.datasets) * sum(len(study.seeds_for(m)) for m in study.modes)
    waiting = f"; upstreams not available yet: {', '.join(blocked)} (their cells are not counted)" if blocked else ""
    progress(f"study {study.name}: grid of {planned} cells; {len(cells)} ready -- {describe(counts)}{waiting}")
    for c in cells:
        if status[c.key] == "failed":
            progress(f"  failed: {c.label}: {read_error(c)}")
    todo = [c for c in cells if status[c.key] == "todo" or (retry_failed and status[c.key] == "failed")]
    if dry_run:
        list_cells(cells, status, progress=progress)
        return {**counts, "blocked": len(blocked), "interrupted": 0}
    # with --wait, cells an earlier submission still has on Slurm are followed to their end, not submitted again
    running = [c for c in cells if status[c.key] in ("queued", "running")] if wait and executor == "slurm" else []
    times, ended = run_cells(todo, run, study=study, jobs=jobs, wait=wait, progress=progress, pool=pool,
                             running=running)
    phases |= times
    progress(f"took {time.perf_counter() - start:.0f} s")
    root = Path(study.experiment_root)
    if report and (root / "results.csv").exists():
        began = time.perf_counter()
        write_study_report(study, progress=progress)
        phases["report"] = time.perf_counter() - began
    total = time.perf_counter() - start
    progress(phase_line(phases, total))
    status = cell_states(cells)
    for c in cells:
        if status[c.key] == "failed":
            progress(f"failed: {c.label}: {read_error(c)} (see {c.run_dir / 'error.json'})")
    counts = {s: sum(v == s for v in status.values()) for s in STATES}
    return {**counts, "blocked": len(blocked), "interrupted": ended.get("lost", 0)}


def describe(counts: dict[str, int]) -> str:
    """'3 done, 2 queued, 1 running, 4 to do, 0 failed' (queued and running only when there are some)."""
    shown = [s for s in STATES if counts[s] or s not in ("queued", "running")]
    return ", ".join(f"{counts[s]} {'to do' if s == 'todo' else s}" for s in shown)


def cell_states(cells: list[Cell]) -> dict[str, str]:
    """{cell key: done | queued | running | todo | failed}: the run folders' view, then Slurm's for the cells
    a submission left there (a queued or running job is neither to do nor failed: it is not submitted twice)."""
    status = {c.key: cell_status(c) for c in cells}
    for key, (state, _job_id) in active_jobs(cells).items():
        status[key] = state
    return status


def list_cells(cells: list[Cell], status: dict[str, str], *, progress: Callable[[str], None]) -> None:
    """A dry run's list: every cell with its state (a Slurm job's id beside the queued and running ones)."""
    for c in cells:
        state = status[c.key]
        if state in ("queued", "running"):
            progress(f"  {state}: {c.label}  (Slurm job {recorded_job(c)['job_id']})")
        elif state == "todo":
            progress(f"  to do: {c.label}  -> {c.run_dir}")
        elif state == "done":
            progress(f"  done: {c.label}")


def check_stale(cells: list[Cell], status: dict[str, str], *, rerun: bool, progress: Callable[[str], None]) -> None:
    """Name the done cells whose data changed after they ran; with `rerun`, set them aside to run again."""
    stale = stale_cells([c for c in cells if status[c.key] == "done"])
    for cell in stale:
        if rerun:
            status[cell.key] = "todo"
            progress(f"  data changed since it ran: {cell.label}; its run set aside as {set_aside(cell)}")
        else:
            progress(f"  data changed since it ran: {cell.label}")
    if stale and not rerun:
        progress(f"{len(stale)} done cell(s) ran on data that has changed since (listed above); their results are "
                 "kept and reported: run the sweep with --rerun-stale to run them again")


def phase_line(phases: dict[str, float], total: float) -> str:
    """'time by phase: upstreams 280 s, full cells 300 s, ...' (cells: the sum of their own times, which overlap
    under --jobs > 1; 'other' is set-up, grid expansion and waiting)."""
    parts = [f"{name} {seconds:.0f} s" for name, seconds in phases.items()]
    other = total - phases.get("upstreams", 0) - phases.get("report", 0) \
        - sum(v for k, v in phases.items() if k.endswith("cells"))
    return f"time by phase: {', '.join(parts)}, other {max(other, 0):.0f} s (total {total:.0f} s)"


def run_cells(todo: list[Cell], run: Callable, *, study: Study, jobs: int, wait: bool,
              progress: Callable[[str], None], pool: Executor | Lane | None = None,
              running: list[Cell] = ()) -> tuple[dict[str, float], dict[str, int]]:
    """Run the cells through the executor (and follow `running`, cells already on Slurm), one progress line
    each; returns the seconds spent per mode and how many cells ended each way."""
    log_folder = Path(study.slurm.log_folder or Path(study.experiment_root) / "slurm_logs")
    finished = {"done": 0, "failed": 0, "submitted": 0, "lost": 0}
    seconds: dict[str, float] = {}
    total = len(todo) + len(running)
    more = {"running": running} if running else {}
    outcomes = run(todo, jobs=jobs, slurm=study.slurm, log_folder=log_folder, wait=wait, pool=pool, **more)
    for i, (cell, outcome) in enumerate(outcomes, 1):
        state = outcome["status"]
        finished[state] = finished.get(state, 0) + 1
        seconds[f"{cell.mode} cells"] = seconds.get(f"{cell.mode} cells", 0.0) + outcome.get("seconds", 0.0)
        detail = (f"{outcome.get('metric', 'acc')} {outcome['val_acc']:.4f}" if state == "done"
                  else outcome.get("error", outcome.get("job_id", "")))
        progress(f"[{i}/{total}] {state:<9} {cell.label}  {detail}  ({outcome.get('seconds', 0):.1f} s)")
    progress(f"ran {total} cells: {finished['done']} done, {finished['failed']} failed"
             + (f", {finished['lost']} ended without a result" if finished["lost"] else "")
             + (f", {finished['submitted']} submitted" if finished["submitted"] else ""))
    return seconds, finished


def write_study_report(study: Study, *, progress: Callable[[str], None] = log.info) -> Path:
    """Markdown report with the paper-style tables and figures, from the study's results.csv."""
    root = Path(study.experiment_root)
    df = load_results([root / "results.csv"], duplicates="last")
    out = root / "report"
    write_report(df, out, notes=[f"study: {study.name}", f"results: {root / 'results.csv'}"])
    summary = summarize(df)
    for finetuning, arch in combos(summary):
        progress(f"\n{finetuning} fine-tuning, {arch}: {score_title(arch)[0].lower()}{score_title(arch)[1:]}, "
                 "mean ± std over seeds")
        progress(to_markdown(paper_table(summary, finetuning=finetuning, arch=arch)))
    progress(f"\nreport: {out / 'report.md'}")
    return out / "report.md"
