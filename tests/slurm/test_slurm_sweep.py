"""`sweep.py --executor slurm` against a real one-node Slurm cluster: a job array shaped by the study's `slurm:`
section, a failing cell, a cancelled and a requeued job resuming to the uninterrupted result, two sweeps at once,
and the dry run's list from Slurm's own view."""
from __future__ import annotations

import csv
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

import sweep
from tests.runs.test_bad_inputs import image_folder
from utils.studies import cell_status, expand, load_study, resolve_upstreams, run_cell
from utils.studies.slurm import recorded_job

TINY = {"num_classes": 3, "widths": [8, 8, 8]}
QUICK = "epochs: 1\nbatch_size: 32\noptimizer: {name: sgd, lr: 0.05}\nschedule: {name: constant}\n"
# digits at 16 px: about 0.4 s an epoch on one core, so a job can be stopped between two of them
EPOCHS = 6
LONG = (f"epochs: {EPOCHS}\nbatch_size: 32\noptimizer: {{name: sgd, lr: 0.05, momentum: 0.9}}\n"
        "schedule: {name: step, milestones_epochs: [3]}\n")


@pytest.fixture()
def upstreams(tmp_path, make_sparse_checkpoint):
    make_sparse_checkpoint(tmp_path / "dense.pt", sparsity=0.0, **TINY)
    make_sparse_checkpoint(tmp_path / "gmp50.pt", sparsity=0.5, **TINY)
    return [{"name": "dense", "model": "Dense", "sparsity": 0.0, "path": str(tmp_path / "dense.pt")},
            {"name": "gmp50", "model": "GMP", "sparsity": 0.5, "path": str(tmp_path / "gmp50.pt")}]


def write_study(tmp_path: Path, upstreams: list[dict], *, trainer: str = QUICK, **extra) -> Path:
    (tmp_path / "trainer.yaml").write_text(trainer)
    study = {"name": "slurm-test", "experiment_root": str(tmp_path / "exp"), "seeds": [1, 2], "upstreams": upstreams,
             "datasets": [{"name": "synthetic"}], "full": {"trainer_config_path": str(tmp_path / "trainer.yaml")},
             "options": {"image_size": 16, "workers": 0},
             "slurm": {"partition": "short", "timeout_min": 20, "cpus_per_job": 1, "gpus_per_job": 0, "mem_gb": 1,
                       "array_parallelism": 2, "additional_parameters": {"comment": "sparse-transfer-test"}}}
    study.update(extra)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def cells_of(path: Path):
    study = load_study(path)
    return expand(study, resolve_upstreams(study, make=False, progress=lambda _: None))[0]


def rows(tmp_path: Path) -> list[dict]:
    with open(tmp_path / "exp" / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def wait_until(condition, *, timeout_s: float = 120, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        time.sleep(0.1)


class Background(threading.Thread):
    """sweep.main in a thread: its counts, or the exit code it ended with."""

    def __init__(self, argv: list[str]):
        super().__init__(daemon=True)
        self.argv, self.counts, self.code = argv, None, None
        self.start()

    def run(self):
        try:
            self.counts = sweep.main(self.argv)
        except SystemExit as end:
            self.code = end.code


def test_a_study_runs_as_one_job_array_its_failing_cell_alone_and_retry_failed_submits_only_that(
        slurm_cluster, tmp_path, upstreams, capsys):
    data = image_folder(tmp_path / "birds", ["a", "b"])
    (data / "train" / "a" / "0.png").write_bytes(b"not an image")          # bad data for one dataset
    path = write_study(tmp_path, upstreams, seeds=[1],
                       datasets=[{"name": "synthetic"}, {"name": "birds", "dataset": "imagefolder", "path": str(data)}])
    with pytest.raises(SystemExit) as end:
        sweep.main([str(path), "--executor", "slurm"])
    out, err = capsys.readouterr()
    assert end.value.code == 1 and "2 cell(s) failed" in err, out + err
    assert out.count("failed    full   birds") == 2 and out.count("failed: full   birds") == 2 and "0.png" in out
    assert sorted((r["model"], r["dset"]) for r in rows(tmp_path)) == [("Dense", "synthetic"), ("GMP", "synthetic")]
    assert (tmp_path / "exp" / "report" / "report.md").exists()
    cells = cells_of(path)
    jobs = [recorded_job(c)["job_id"] for c in cells]
    assert len({j.split("_")[0] for j in jobs}) == 1 and sorted(j.split("_")[1] for j in jobs) == ["0", "1", "2", "3"]
    job = slurm_cluster.show_job(jobs[0])                 # the study's slurm: section, as sbatch got it
    assert job["JobState"] == "COMPLETED" and job["Partition"] == "short" and job["TimeLimit"] == "00:20:00"
    assert job["NumCPUs"] == "1" and job["MinMemoryNode"] == "1G" and job["Comment"] == "sparse-transfer-test"
    assert job["ArrayTaskThrottle"] == "2" and job["JobName"] == "sparse-transfer"
    sweep.main([str(path), "--dry-run"])
    listed = capsys.readouterr().out
    assert listed.count("  done: full   synthetic") == 2 and listed.count("  failed: full   birds") == 2

    image_folder(tmp_path / "birds", ["a", "b"])              # the user fixes the data
    counts = sweep.main([str(path), "--executor", "slurm", "--retry-failed"])
    out = capsys.readouterr().out
    assert counts["done"] == 4 and counts["failed"] == 0
    assert "ran 2 cells" in out and out.count("done      full   birds") == 2
    assert {recorded_job(c)["job_id"].split("_")[0] for c in cells if c.dataset == "birds"} != {jobs[0].split("_")[0]}
    assert sorted((r["model"], r["dset"]) for r in rows(tmp_path)) == [
        ("Dense", "birds"), ("Dense", "synthetic"), ("GMP", "birds"), ("GMP", "synthetic")]
    again = sweep.main([str(path), "--executor", "slurm", "--no-report"])      # all done: nothing submitted
    assert again["done"] == 4 and "ran 0 cells" in capsys.readouterr().out and len(rows(tmp_path)) == 4


STRAIGHT: dict[str, dict[str, torch.Tensor]] = {}       # cell key -> weights of the cell run straight through


def straight_weights(tmp_path: Path, cell) -> dict[str, torch.Tensor]:
    """The weights of the same cell run here without a stop (one thread, as in its one-CPU job)."""
    if cell.key not in STRAIGHT:
        straight = type(cell)(**{**cell.__dict__, "root": tmp_path / "straight"})
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert run_cell(straight)["status"] == "done"
        finally:
            torch.set_num_threads(threads)
        STRAIGHT[cell.key] = torch.load(straight.run_dir / "model.pt", weights_only=True)["state_dict"]
    return STRAIGHT[cell.key]


def assert_equals_an_uninterrupted_run(tmp_path: Path, cell) -> None:
    """The cell's weights bit for bit those of the same cell run straight through, its metrics one line per
    epoch, its row once."""
    a = straight_weights(tmp_path, cell)
    b = torch.load(cell.run_dir / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((cell.run_dir / "metrics.jsonl").read_text().splitlines()) == EPOCHS
    assert [r["seed"] for r in rows(tmp_path)].count(str(cell.seed)) == 1


def test_a_cancelled_and_a_requeued_job_resume_from_their_checkpoints_to_the_uninterrupted_result(
        slurm_cluster, tmp_path, upstreams, capsys):
    path = write_study(tmp_path, upstreams[1:], trainer=LONG, seeds=[4, 5], datasets=[{"name": "digits"}])
    cancelled, requeued = cells_of(path)
    following = Background([str(path), "--executor", "slurm", "--no-report"])
    ids = {}
    for cell, action in ((cancelled, ["scancel"]), (requeued, ["scontrol", "requeue"])):
        wait_until(lambda: (cell.run_dir / "checkpoint.pt").exists(), what="the first epoch's checkpoint")
        ids[cell.seed] = recorded_job(cell)["job_id"]
        assert slurm_cluster.state(ids[cell.seed]) == "RUNNING"          # stopped mid-training, past an epoch
        subprocess.run([*action, ids[cell.seed]], check=True)

    for cell in (cancelled, requeued):                   # meanwhile, each cell run here without a stop
        straight_weights(tmp_path, cell)
    following.join(180)          # the sweep follows the requeued job through its second start, to its end
    out, err = capsys.readouterr()
    assert not following.is_alive() and following.code == 1 and "1 job(s) ended without a result" in err, out + err
    assert f"ended (CANCELLED) without a result (log: {recorded_job(cancelled)['stderr']})" in out
    assert "done      full   digits       gmp50            seed 5" in out
    assert slurm_cluster.show_job(ids[requeued.seed])["Restarts"] == "1"
    resumed_at = len((cancelled.run_dir / "metrics.jsonl").read_text().splitlines())
    assert cell_status(cancelled) == "todo" and 1 <= resumed_at < EPOCHS
    assert_equals_an_uninterrupted_run(tmp_path, requeued)

    counts = sweep.main([str(path), "--executor", "slurm", "--no-report"])   # the next sweep: the cancelled cell
    assert counts["done"] == 2 and counts["interrupted"] == 0 and "ran 1 cells" in capsys.readouterr().out
    log = Path(recorded_job(cancelled)["stderr"]).read_text()
    assert f"resuming {cancelled.run_dir} at epoch {resumed_at}" in log, log[-2000:]
    assert_equals_an_uninterrupted_run(tmp_path, cancelled)


def test_two_sweeps_at_once_run_no_cell_twice_and_the_dry_run_shows_slurms_view(slurm_cluster, tmp_path,
                                                                                upstreams, capsys):
    path = write_study(tmp_path, upstreams, seeds=[1], slurm={"partition": "short", "timeout_min": 20,
                                                              "cpus_per_job": 1, "gpus_per_job": 0,
                                                              "array_parallelism": 1})
    cells = cells_of(path)
    sweep.main([str(path), "--executor", "slurm", "--no-wait", "--no-report"])   # submits and leaves
    submitted = {c.key: recorded_job(c)["job_id"] for c in cells}
    # a waiting sweep finds both cells on Slurm: it submits nothing and follows them
    following = Background([str(path), "--executor", "slurm", "--no-report"])
    wait_until(lambda: "queued" in capsys.readouterr().out or not following.is_alive(), timeout_s=60,
               what="the second sweep to read the study")
    # ... and a third, started while the second holds the study, stops at once naming the holder
    with pytest.raises(SystemExit) as end:
        sweep.main([str(path), "--executor", "slurm", "--no-report"])
    assert end.value.code == 2 and "is in use by" in capsys.readouterr().err
    wait_until(lambda: slurm_cluster.state(submitted[cells[0].key]) == "RUNNING", what="the first task to start")
    listing = sweep.main([str(path), "--dry-run"])                 # needs no lock: Slurm's view, as it is now
    out = capsys.readouterr().out
    assert listing["running"] == 1 and listing["queued"] == 1, out             # array_parallelism 1: one at a time
    assert f"  running: {cells[0].label}  (Slurm job {submitted[cells[0].key]})" in out
    assert f"  queued: {cells[1].label}  (Slurm job {submitted[cells[1].key]})" in out

    following.join(180)
    assert following.code is None and following.counts["done"] == 2 and "ran 2 cells: 2 done" in \
        capsys.readouterr().out
    assert {c.key: recorded_job(c)["job_id"] for c in cells} == submitted        # nothing submitted twice
    assert sorted((r["model"], r["seed"]) for r in rows(tmp_path)) == [("Dense", "1"), ("GMP", "1")]
    sweep.main([str(path), "--dry-run"])
    assert capsys.readouterr().out.count("  done: ") == 2


def test_a_job_slurm_would_never_start_is_cancelled_and_its_cell_fails_naming_why(slurm_cluster, tmp_path,
                                                                                   upstreams, capsys):
    path = write_study(tmp_path, upstreams[:1], seeds=[1], slurm={"partition": "short", "timeout_min": 720,
                                                                  "cpus_per_job": 1, "gpus_per_job": 0})
    with pytest.raises(SystemExit) as end:                # 12 hours asked of a partition of 1 hour at most
        sweep.main([str(path), "--executor", "slurm", "--no-report"])
    out = capsys.readouterr().out
    assert end.value.code == 1
    assert "would never start job" in out and ("PartitionTimeLimit" in out or "PartitionConfig" in out), out
    (cell,) = cells_of(path)
    assert cell_status(cell) == "failed" and slurm_cluster.state(recorded_job(cell)["job_id"]) == "CANCELLED"


def test_a_job_array_sbatch_refuses_is_one_line_and_nothing_is_recorded(slurm_cluster, tmp_path, upstreams, capsys):
    path = write_study(tmp_path, upstreams[:1], seeds=[1], slurm={"partition": "nosuch", "timeout_min": 20,
                                                                  "cpus_per_job": 1, "gpus_per_job": 0})
    with pytest.raises(SystemExit) as end:
        sweep.main([str(path), "--executor", "slurm", "--no-report"])
    err = capsys.readouterr().err
    assert end.value.code == 2 and "error: the job array of 1 cells was not submitted: " in err, err
    assert "invalid partition" in err.lower() and "Traceback" not in err
    (cell,) = cells_of(path)
    assert cell_status(cell) == "todo" and recorded_job(cell) is None
