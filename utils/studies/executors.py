"""Where cells run: in this process, in N local processes (one per GPU when GPUs exist), or via submitit."""
from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from utils.errors import UserError
from utils.registry import Registry
from utils.runs.setup import usable_cores
from utils.studies.cells import Cell, run_cell
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


def _submitit(cells: list[Cell], *, cluster: str | None, slurm: SlurmSpec, log_folder: Path,
              wait: bool = True) -> Iterator[Outcome]:
    try:
        import submitit
    except ImportError:
        raise UserError("the slurm executor needs submitit: pip install submitit") from None

    executor = submitit.AutoExecutor(folder=str(log_folder), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": slurm.timeout_min, "cpus_per_task": slurm.cpus_per_job,
                              "gpus_per_node": slurm.gpus_per_job, "tasks_per_node": 1, "nodes": 1}
    if slurm.mem_gb:
        params["mem_gb"] = slurm.mem_gb
    if executor.cluster == "slurm":
        params.update(slurm_array_parallelism=slurm.array_parallelism, name="sparse-transfer",
                      slurm_additional_parameters=dict(slurm.additional_parameters))
        if slurm.partition:
            params["slurm_partition"] = slurm.partition
    executor.update_parameters(**params)
    with _importable_from_anywhere():
        jobs = executor.map_array(run_cell, cells)  # one job array
    log.info("submitted %d cells as job array %s (logs in %s)", len(jobs), jobs[0].job_id if jobs else "-", log_folder)
    if not wait:
        for cell, job in zip(cells, jobs):
            yield cell, {"status": "submitted", "job_id": job.job_id}
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


@EXECUTORS.register("slurm")
def run_slurm(cells: list[Cell], *, slurm: SlurmSpec, log_folder: Path, wait: bool = True,
              **_: Any) -> Iterator[Outcome]:
    """A Slurm job array through submitit (partition, time limit, GPUs/CPUs per job from the study file)."""
    return _submitit(cells, cluster="slurm", slurm=slurm, log_folder=log_folder, wait=wait)


@EXECUTORS.register("submitit-local")
def run_submitit_local(cells: list[Cell], *, slurm: SlurmSpec, log_folder: Path, wait: bool = True,
                       **_: Any) -> Iterator[Outcome]:
    """The Slurm code path with submitit's local executor: check a study's launch without a cluster."""
    return _submitit(cells, cluster="local", slurm=slurm, log_folder=log_folder, wait=wait)


def get_executor(name: str) -> Callable[..., Iterator[Outcome]]:
    return EXECUTORS.get(name)
