"""Where cells run: in this process, in N local processes (one per GPU when GPUs exist), or via submitit."""
from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from utils.cli import setup_logging
from utils.errors import UserError, one_line
from utils.io import atomic_write_json
from utils.registry import Registry
from utils.runs.setup import usable_cores
from utils.studies.cells import Cell, recorded_outcome, run_cell
from utils.studies.slurm import ACTIVE, STOPPED, never_starts, record_job, recorded_job, squeue_states
from utils.studies.study import SlurmSpec

log = logging.getLogger(__name__)

Outcome = tuple[Cell, dict[str, Any]]
EXECUTORS: Registry = Registry("executor")


def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _pin_gpu(cell: Cell, slot: int, gpus: int) -> Cell:
    if gpus:
        cell.options = {**cell.options, "gpus": [slot % gpus]}
    return cell


_PARENT: int | None = None
_THREADS = 1


def _init_worker(parent: int, threads: int) -> None:
    """Worker initializer: a worker ends within a second of its sweep process (a watcher thread; not the
    kernel's PR_SET_PDEATHSIG, which fires when the *thread* that started the worker ends -- the pool starts
    workers from whichever thread submits), and a worker whose sweep is gone never starts a cell (see
    `in_worker`). Each worker takes its share of the cores: N workers with all cores each would fight over them."""
    global _PARENT, _THREADS
    _PARENT, _THREADS = parent, threads
    torch.set_num_threads(threads)
    threading.Thread(target=_end_with_parent, args=(parent,), name="end-with-sweep", daemon=True).start()


def _end_with_parent(parent: int, every_s: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(every_s)
    os.kill(os.getpid(), signal.SIGTERM)


def in_worker(fn: Callable[..., Any], *args: Any, threads: int | None = None, **kwargs: Any) -> Any:
    """Run `fn` in a pool worker with `threads` torch threads (default: the worker's share of the cores),
    unless the sweep that started the worker is gone."""
    if _PARENT is not None and os.getppid() != _PARENT:
        raise SystemExit("the sweep that started this worker is gone")
    torch.set_num_threads(threads or _THREADS)
    return fn(*args, **kwargs)


def default_jobs() -> int:
    """Local runs at once when none is asked for: one per GPU, else one per core up to 4 (the small models of
    a demo or a test keep one core busy each; a bigger one splits the cores over the workers)."""
    return _gpu_count() or min(usable_cores(), 4)


@contextlib.contextmanager
def worker_pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """`jobs` worker processes (spawned, dying with this process), each with cores // jobs torch threads;
    the sweep makes one and runs both its upstreams and its cells in it."""
    context = multiprocessing.get_context("spawn")
    threads = max(1, usable_cores() // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                             initargs=(os.getpid(), threads)) as pool:
        yield pool


class FairPool:
    """Worker processes shared by several studies, each submitting through its own lane: at most one task per
    worker is handed to the processes at a time, and a free worker takes the next task of the lanes in turn --
    so a study whose runs are few and long is not stuck behind another's queue of many short ones."""

    def __init__(self, pool: ProcessPoolExecutor, jobs: int):
        self.pool, self.jobs = pool, jobs
        self.lock = threading.RLock()                  # a task done at once calls back inside _dispatch
        self.queues: dict[str, collections.deque] = {}
        self.turn: collections.deque[str] = collections.deque()
        self.running = 0

    def lane(self, name: str) -> "Lane":
        with self.lock:
            self.queues.setdefault(name, collections.deque())
            self.turn.append(name)
        return Lane(self, name)

    def _submit(self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Future:
        result: Future = Future()
        with self.lock:
            self.queues[name].append((result, fn, args, kwargs))
        self._dispatch()
        return result

    def _dispatch(self) -> None:
        with self.lock:
            while self.running < self.jobs and any(self.queues.values()):
                while not self.queues[self.turn[0]]:
                    self.turn.rotate(-1)
                result, fn, args, kwargs = self.queues[self.turn[0]].popleft()
                self.turn.rotate(-1)
                if not result.set_running_or_notify_cancel():
                    continue
                try:
                    future = self.pool.submit(fn, *args, **kwargs)
                except Exception as err:  # noqa: BLE001 -- a broken pool fails each task, none waits forever
                    result.set_exception(err)
                    continue
                self.running += 1
                future.add_done_callback(lambda done, result=result: self._finished(done, result))

    def _finished(self, done: Future, result: Future) -> None:
        with self.lock:
            self.running -= 1
        if done.exception() is not None:
            result.set_exception(done.exception())
        else:
            result.set_result(done.result())
        self._dispatch()


class Lane:
    """One study's way into a `FairPool` (what `submit` gives is a plain Future)."""

    def __init__(self, fair: FairPool, name: str):
        self.fair, self.name = fair, name

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self.fair._submit(self.name, fn, args, kwargs)


@EXECUTORS.register("local")
def run_local(cells: list[Cell], *, jobs: int = 1, slurm: SlurmSpec | None = None,
              pool: "ProcessPoolExecutor | Lane | None" = None, **_: Any) -> Iterator[Outcome]:
    """One cell at a time in this process, or `jobs` worker processes (cells round-robin over GPUs); `pool`:
    workers already started (`worker_pool`)."""
    gpus = _gpu_count()
    if jobs <= 1 and pool is None:
        for i, cell in enumerate(cells):
            yield cell, run_cell(_pin_gpu(cell, i, gpus))
        return
    with contextlib.nullcontext(pool) if pool is not None else worker_pool(jobs) as workers:
        futures = {workers.submit(in_worker, run_cell, _pin_gpu(cell, i, gpus)): cell for i, cell in enumerate(cells)}
        for future in as_completed(futures):
            cell = futures[future]
            try:
                yield cell, future.result()
            except Exception as err:  # noqa: BLE001 -- a crashed worker process fails its cell only
                yield cell, {"status": "failed", "error": f"worker crashed: {type(err).__name__}: {err}"}


@contextlib.contextmanager
def _importable_from_anywhere() -> Iterator[None]:
    """Jobs unpickle `run_cell`, so they must import this repository whatever directory they start in:
    its root goes first on the PYTHONPATH the job inherits (local processes and sbatch both copy it)."""
    root = str(Path(__file__).resolve().parents[2])
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([root, old]) if old else root
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


class CellJob:
    """A cell as a submitit job. Torch takes the job's cores (`--cpus-per-task`), not the whole node's; the run's
    log lines (data, resuming at epoch N, each epoch) go to the job's log. Slurm's SIGTERM (scancel, a requeue,
    the end of the time limit) stops the run at once -- submitit would let it go on until SIGKILL, KillWait
    later -- keeping the checkpoint of the last finished epoch. `checkpoint` makes the job requeueable by
    submitit (its USR2 before a time limit or a preemption): the requeued job runs the cell again, which resumes."""

    def __call__(self, cell: Cell) -> dict[str, Any]:
        setup_logging()
        signal.signal(signal.SIGTERM, _stop_on_term)
        torch.set_num_threads(usable_cores())
        log.info("cell %s in %s, %d torch thread(s)", cell.label, cell.run_dir, torch.get_num_threads())
        return run_cell(cell)

    def checkpoint(self, cell: Cell) -> Any:
        import submitit

        log.info("cell %s: requeued by submitit; it resumes from its last checkpoint", cell.label)
        return submitit.helpers.DelayedSubmission(self, cell)


def _stop_on_term(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)        # not an Exception: the cell is not marked failed, only stopped


def _submitit(cells: list[Cell], *, cluster: str | None, slurm: SlurmSpec, log_folder: Path,
              wait: bool = True, running: list[Cell] = ()) -> Iterator[Outcome]:
    try:
        import submitit
    except ImportError:
        raise UserError("the slurm executor needs submitit: pip install submitit") from None
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--executor slurm: no sbatch on this machine's PATH (Slurm's commands): run the sweep where "
                        "jobs are submitted (a login node), or use --executor local")
    executor = submitit.AutoExecutor(folder=str(log_folder), cluster=cluster)
    executor.update_parameters(**_job_options(slurm, on_slurm=executor.cluster == "slurm"))
    jobs = _submit_array(submitit, executor, cells) if cells else []
    log.info("submitted %d cells as job array %s (logs in %s)", len(jobs), jobs[0].job_id if jobs else "-",
             log_folder)
    if executor.cluster == "slurm":
        for cell, job in zip(cells, jobs):
            record_job(cell, job_id=job.job_id, stdout=job.paths.stdout, stderr=job.paths.stderr)
    if not wait:
        for cell, job in zip(cells, jobs):
            yield cell, {"status": "submitted", "job_id": job.job_id}
        return
    if executor.cluster == "slurm":
        yield from follow_slurm_jobs([(c, None) for c in running] + list(zip(cells, jobs)))
        return
    pending = dict(zip(jobs, cells))
    while pending:
        for job in list(pending):
            if job.done():
                cell = pending.pop(job)
                try:
                    yield cell, job.result()
                except Exception as err:  # noqa: BLE001 -- a job killed by the scheduler fails its cell only
                    yield cell, {"status": "failed", "error": f"job {job.job_id}: {type(err).__name__}: {err}"}
        if pending:
            time.sleep(2)


def _job_options(slurm: SlurmSpec, *, on_slurm: bool) -> dict[str, Any]:
    """submitit's parameters from the study's slurm: section (sbatch's options on a cluster)."""
    params: dict[str, Any] = {"timeout_min": slurm.timeout_min, "cpus_per_task": slurm.cpus_per_job,
                              "gpus_per_node": slurm.gpus_per_job, "tasks_per_node": 1, "nodes": 1}
    if slurm.mem_gb:
        params["mem_gb"] = slurm.mem_gb
    if on_slurm:
        params.update(slurm_array_parallelism=slurm.array_parallelism, name="sparse-transfer",
                      slurm_additional_parameters=dict(slurm.additional_parameters))
        if slurm.partition:
            params["slurm_partition"] = slurm.partition
    return params


def _submit_array(submitit: Any, executor: Any, cells: list[Cell]) -> list[Any]:
    """The cells as one job array; sbatch's refusal (no controller, an unknown partition, ...) as one line."""
    with _importable_from_anywhere():
        try:
            return executor.map_array(CellJob(), cells)
        except (submitit.core.utils.FailedJobError, OSError) as err:
            said = [line for line in str(err).splitlines() if line.strip()]
            raise UserError(f"the job array of {len(cells)} cells was not submitted: "
                            f"{said[-1] if said else type(err).__name__} (`sinfo` should list the cluster's "
                            "partitions from here; the study's slurm: section sets the jobs' options)") from None


def follow_slurm_jobs(cells_jobs: list[tuple[Cell, Any]], *, poll_s: float = 2.0, grace_s: float = 15.0,
                      silent_s: float = 120.0) -> Iterator[Outcome]:
    """Each cell's outcome once `squeue` no longer shows its job queued or running (a requeued job is
    followed through its next start): submitit's result where the job wrote one, else the cell's own files;
    a job gone without either (cancelled, killed, out of time) is `lost` -- its cell resumes from its last
    checkpoint next time. `cells_jobs`: (cell, its submitit job or None for a job an earlier sweep submitted).
    Never asks `sacct` (clusters without an accounting database have none)."""
    ended_at: dict[str, float] = {}
    last_answer = time.monotonic()
    pending = {cell.key: (cell, job) for cell, job in cells_jobs}
    ids = {cell.key: (job.job_id if job is not None else recorded_job(cell)["job_id"]) for cell, job in cells_jobs}
    while pending:
        states = squeue_states(ids[key] for key in pending)
        now = time.monotonic()
        if states is None:
            if now - last_answer > silent_s:
                raise UserError(f"squeue has not answered for {silent_s:.0f} s: the jobs go on without this sweep; "
                                "run it again later to follow them (finished cells are skipped)")
            time.sleep(poll_s)
            continue
        last_answer = now
        for key, (cell, job) in list(pending.items()):
            job_id, state = ids[key], states.get(ids[key], "no longer listed")
            if (why := never_starts(state)) is not None:
                yield cell, _never_started(cell, job_id, f"{state.partition(' ')[2]}: {why}")
                del pending[key]
                continue
            if state.split(" ")[0] in ACTIVE:
                ended_at.pop(job_id, None)            # back in the queue after a requeue
                continue
            outcome = _finished_outcome(cell, job)
            if outcome is None and state not in STOPPED and now - ended_at.setdefault(job_id, now) < grace_s:
                continue                               # its files may reach this node's view a moment later
            del pending[key]
            yield cell, outcome or {"status": "lost", "job_id": job_id,
                                    "error": f"job {job_id} ended ({state}) without a result (log: "
                                             f"{recorded_job(cell)['stderr']}); it resumes from its last "
                                             "checkpoint when the sweep runs again"}
        if pending:
            time.sleep(poll_s)


def _never_started(cell: Cell, job_id: str, why: str) -> dict[str, Any]:
    """A job Slurm will never start as submitted: cancelled, its cell failed with the reason (after the study
    file is fixed, --retry-failed submits it again)."""
    subprocess.run(["scancel", job_id], capture_output=True, timeout=60)
    error = f"Slurm would never start job {job_id} ({why}); it was cancelled"
    atomic_write_json(cell.run_dir / "error.json", {"error": error, "cell": cell.label})
    return {"status": "failed", "error": error, "job_id": job_id}


def _finished_outcome(cell: Cell, job: Any) -> dict[str, Any] | None:
    """submitit's result of the job where it wrote one, else what the cell's folder holds (None: nothing). A job
    that failed outside its run (its environment, submitit) fails its cell in the cell's folder too, so that the
    sweep's counts, its exit code and --retry-failed see it."""
    if job is not None and job.paths.result_pickle.exists():
        try:
            return job.result()
        except Exception as err:  # noqa: BLE001 -- a job that raised outside run_cell fails its cell only
            error = f"job {job.job_id}: {type(err).__name__}: {one_line(str(err))} (log: {job.paths.stderr})"
            if recorded_outcome(cell) is None:
                atomic_write_json(cell.run_dir / "error.json", {"error": error, "cell": cell.label})
            return {"status": "failed", "error": error}
    return recorded_outcome(cell)


@EXECUTORS.register("slurm")
def run_slurm(cells: list[Cell], *, slurm: SlurmSpec, log_folder: Path, wait: bool = True,
              running: list[Cell] = (), **_: Any) -> Iterator[Outcome]:
    """A Slurm job array through submitit (partition, time limit, GPUs/CPUs per job from the study file); with
    `wait`, also follows `running`: cells an earlier sweep submitted whose jobs are still queued or running."""
    return _submitit(cells, cluster="slurm", slurm=slurm, log_folder=log_folder, wait=wait, running=running)


@EXECUTORS.register("submitit-local")
def run_submitit_local(cells: list[Cell], *, slurm: SlurmSpec, log_folder: Path, wait: bool = True,
                       **_: Any) -> Iterator[Outcome]:
    """The Slurm code path with submitit's local executor: check a study's launch without a cluster."""
    return _submitit(cells, cluster="local", slurm=slurm, log_folder=log_folder, wait=wait)


def get_executor(name: str) -> Callable[..., Iterator[Outcome]]:
    return EXECUTORS.get(name)
