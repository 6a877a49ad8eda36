"""What Slurm itself says about a study's cells: each submitted cell's job id is kept in its run folder
(`slurm_job.json`), and `squeue` tells which of those jobs are still queued or running.

Only `squeue` is asked (no accounting database needed: many clusters run without `sacct`, and its states
lag): a job it no longer lists has ended, and the cell's own files say how -- `result.json` done,
`error.json` failed, neither: the job ended without a result (cancelled, killed, out of time), so the cell
resumes from its last checkpoint when it runs again.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterable

from utils.io import atomic_write_json, read_json
from utils.studies.cells import Cell

log = logging.getLogger(__name__)

JOB_FILE = "slurm_job.json"
# squeue's states of a job that has not ended, and what a sweep calls them (man squeue, JOB STATE CODES)
ACTIVE = {"PENDING": "queued", "REQUEUED": "queued", "REQUEUE_HOLD": "queued", "REQUEUE_FED": "queued",
          "RESV_DEL_HOLD": "queued", "SUSPENDED": "queued", "CONFIGURING": "running", "RUNNING": "running",
          "COMPLETING": "running", "RESIZING": "running", "SIGNALING": "running", "STAGE_OUT": "running",
          "STOPPED": "running"}
# squeue's reasons for a pending job that mean it will not start as submitted, and what to change
NEVER_STARTS = {
    "PartitionTimeLimit": "its time limit is over the partition's: lower the study's slurm: timeout_min",
    "PartitionNodeLimit": "it asks for more nodes than the partition has",
    "PartitionConfig": "it asks for more than the partition's nodes have or allow (CPUs, GPUs, memory, time): see "
                       "the study's slurm: section",
    "BadConstraints": "no node has what it asks for (CPUs, GPUs, memory): see the study's slurm: section",
    "InvalidAccount": "its account is not valid here", "InvalidQOS": "its QOS is not valid here",
    "QOSMaxWallDurationPerJobLimit": "its time limit is over its QOS's: lower the study's slurm: timeout_min",
    "AssocMaxWallDurationPerJobLimit": "its time limit is over its account's: lower the study's slurm: timeout_min",
    "DependencyNeverSatisfied": "a job it depends on failed"}
# states of a job Slurm stopped before its end: it wrote no result, so a sweep need not wait for one to appear
STOPPED = {"CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def record_job(cell: Cell, *, job_id: str, stdout: Path, stderr: Path) -> None:
    """Write which Slurm job runs `cell`, and its logs (the run's own lines are in `stderr`), into its run folder:
    a later sweep or dry run asks Slurm about that job."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cell.run_dir / JOB_FILE, {"job_id": job_id, "stdout": str(stdout), "stderr": str(stderr),
                                                "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def recorded_job(cell: Cell) -> dict | None:
    path = cell.run_dir / JOB_FILE
    return read_json(path) if path.exists() else None


def squeue_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """{job id: squeue's state} for those of `job_ids` Slurm still lists (array tasks as `123_4`); a pending job
    that will never start has its reason after the state ("PENDING PartitionTimeLimit"); None when `squeue` is
    not here or does not answer (no cluster to ask)."""
    wanted = set(job_ids)
    if not wanted or shutil.which("squeue") is None:
        return None if wanted else {}
    arrays = sorted({job_id.split("_")[0] for job_id in wanted})     # only these jobs: a cluster may hold many
    try:
        done = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r",
                               f"--jobs={','.join(arrays)}"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("squeue did not answer (%s): the sweep cannot see which cells Slurm is running", err)
        return None
    if done.returncode and "Invalid job id" in done.stderr:
        return {}                                      # none of them is known any more: all have ended
    if done.returncode:
        log.warning("squeue failed (%s): the sweep cannot see which cells Slurm is running", done.stderr.strip())
        return None
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if job_id in wanted:
            state = state.split()[0] if state else "UNKNOWN"
            states[job_id] = f"{state} {reason}" if state == "PENDING" and reason in NEVER_STARTS else state
    return states


def never_starts(state: str) -> str | None:
    """Why a pending job will not start as submitted (its squeue reason), None if it may."""
    reason = state.partition(" ")[2]
    return NEVER_STARTS.get(reason)


def active_jobs(cells: list[Cell]) -> dict[str, tuple[str, str]]:
    """{cell key: ("queued" | "running", job id)} for the cells whose recorded Slurm job has not ended."""
    jobs = {c.key: job["job_id"] for c in cells if (job := recorded_job(c))}
    states = squeue_states(jobs.values()) or {}
    return {key: (ACTIVE[states[job_id].split()[0]], job_id) for key, job_id in jobs.items()
            if states.get(job_id, "").split(" ")[0] in ACTIVE}

