"""A real one-node Slurm cluster (tests/slurm/cluster.sh) for the tests of this folder: started once per test
process on its own ports, stopped at the end. `make test` installs Slurm when it runs as root (CI does); elsewhere
these tests say in one line that Slurm is missing."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

CLUSTER = Path(__file__).with_name("cluster.sh")
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")


@dataclass
class Cluster:
    folder: Path
    conf: Path
    start_s: float                 # how long the cluster took to come up (its node idle)

    def show_job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o`'s fields of one job (Slurm keeps a finished job for MinJobAge, 10 minutes)."""
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                             check=True).stdout
        return dict(field.split("=", 1) for field in out.split() if "=" in field)

    def state(self, job_id: str) -> str | None:
        out = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i %T"],
                             capture_output=True, text=True, check=True).stdout
        return dict(line.split() for line in out.splitlines()).get(job_id)


def slurm_missing() -> str | None:
    missing = [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} not found): as root `make test` installs it; "
                "else: sudo apt-get install slurmctld slurmd slurm-client munge")
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    problem = slurm_missing()
    if problem:
        if os.geteuid() == 0:            # make test installs it as root: missing here is a failure, not a skip
            pytest.fail(problem)
        pytest.skip(problem)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    port = 16817 + 10 * int(worker.removeprefix("gw") or 0)      # a cluster per test process, none on 6817
    folder = tmp_path_factory.mktemp("slurm")
    began = time.perf_counter()
    started = subprocess.run([str(CLUSTER), "start", str(folder), str(port)], capture_output=True, text=True)
    if started.returncode:
        pytest.fail(f"the one-node Slurm cluster did not start: {started.stderr.strip()} (logs in {folder}/log)")
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    try:
        yield Cluster(folder=folder, conf=folder / "slurm.conf", start_s=time.perf_counter() - began)
    finally:
        subprocess.run([str(CLUSTER), "stop", str(folder), str(port)], capture_output=True)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
