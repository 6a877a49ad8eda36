"""The study runner: grid expansion, content keys, skip-done, failure isolation, submitit path."""
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import sweep
from utils.paths import REPO_ROOT as REPO
from utils.studies import cell_status, expand, load_study, resolve_upstreams

TRAINER = "epochs: 1\nbatch_size: 32\noptimizer: {name: sgd, lr: 0.05}\nschedule: {name: constant}\n"


TINY = {"num_classes": 3, "widths": [8, 8, 8]}


def write_study(tmp_path: Path, upstreams: list[dict], **extra) -> Path:
    (tmp_path / "trainer.yaml").write_text(TRAINER)
    study = {"name": "t", "experiment_root": str(tmp_path / "exp"), "seeds": [1, 2], "upstreams": upstreams,
             "datasets": [{"name": "synthetic"}], "full": {"trainer_config_path": str(tmp_path / "trainer.yaml")},
             "options": {"image_size": 16, "workers": 0}, "slurm": {"gpus_per_job": 0, "cpus_per_job": 1}}
    study.update(extra)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.fixture()
def two_upstreams(tmp_path, make_sparse_checkpoint):
    dense, sparse = tmp_path / "dense.pt", tmp_path / "sparse.pt"
    make_sparse_checkpoint(dense, sparsity=0.0, **TINY)
    make_sparse_checkpoint(sparse, sparsity=0.5, **TINY)
    return [{"name": "dense", "model": "Dense", "sparsity": 0.0, "path": str(dense)},
            {"name": "gmp50", "model": "GMP", "sparsity": 0.5, "path": str(sparse)}]


def test_grid_expansion_and_content_keys(tmp_path, two_upstreams):
    path = write_study(tmp_path, two_upstreams)
    study = load_study(path)
    cells, blocked = expand(study, resolve_upstreams(study, make=False, progress=lambda s: None))
    assert blocked == [] and len(cells) == 2 * 1 * 1 * 2
    assert len({c.key for c in cells}) == len(cells)
    # the key follows content, not file names: a renamed copy of a checkpoint gives the same keys
    shutil.copy(tmp_path / "sparse.pt", tmp_path / "renamed.pt")
    two_upstreams[1]["path"] = str(tmp_path / "renamed.pt")
    study2 = load_study(write_study(tmp_path, two_upstreams))
    cells2, _ = expand(study2, resolve_upstreams(study2, make=False, progress=lambda s: None))
    assert [c.key for c in cells2] == [c.key for c in cells]
    # ... and a changed trainer config changes every key
    (tmp_path / "trainer.yaml").write_text(TRAINER.replace("lr: 0.05", "lr: 0.01"))
    cells3, _ = expand(study2, resolve_upstreams(study2, make=False, progress=lambda s: None))
    assert not {c.key for c in cells3} & {c.key for c in cells}


def test_skip_done_failure_isolation_and_retry(tmp_path, two_upstreams, capsys, make_sparse_checkpoint):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    ups = two_upstreams + [{"name": "broken", "model": "X", "sparsity": 0.9, "path": str(broken)}]
    path = write_study(tmp_path, ups)
    with pytest.raises(SystemExit) as exit_info:      # failed cells: a non-zero exit, the cells listed
        sweep.main([str(path), "--no-report", "--jobs", "1"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 1 and "error: sweep incomplete: 2 cell(s) failed" in captured.err
    assert "[6/6]" in captured.out and captured.out.count("failed: full   synthetic    broken") == 2
    rows = list(csv.DictReader(open(tmp_path / "exp" / "results.csv")))
    assert sorted((r["model"], r["seed"]) for r in rows) == [("Dense", "1"), ("Dense", "2"), ("GMP", "1"), ("GMP", "2")]
    study = load_study(path)
    cells, _ = expand(study, resolve_upstreams(study, make=False, progress=lambda s: None))
    failed = [c for c in cells if cell_status(c) == "failed"]
    assert len(failed) == 2 and all((c.run_dir / "error.json").exists() for c in failed)

    # a second sweep repeats nothing finished and, without --retry-failed, leaves failures alone
    with pytest.raises(SystemExit):
        sweep.main([str(path), "--no-report", "--jobs", "1"])
    assert "ran 0 cells" in capsys.readouterr().out
    assert len(list(csv.DictReader(open(tmp_path / "exp" / "results.csv")))) == 4

    # the user fixes the file: its content, so its cells' keys, change
    make_sparse_checkpoint(broken, sparsity=0.9, **TINY)
    counts = sweep.main([str(path), "--no-report", "--retry-failed", "--jobs", "1"])
    assert counts["done"] == 6 and counts["todo"] == 0


def test_submitit_path_with_local_executor(tmp_path, two_upstreams, capsys, monkeypatch):
    path = write_study(tmp_path, two_upstreams[:1], seeds=[5])
    monkeypatch.chdir(tmp_path)                     # jobs import the repository from any directory
    monkeypatch.delenv("PYTHONPATH", raising=False)
    counts = sweep.main([str(path), "--executor", "submitit-local", "--no-report"])
    assert counts == {"done": 1, "queued": 0, "running": 0, "todo": 0, "failed": 0, "blocked": 0, "interrupted": 0}
    assert list((tmp_path / "exp" / "slurm_logs").glob("*_0_log.out"))


def test_dry_run_runs_nothing(tmp_path, two_upstreams, capsys):
    path = write_study(tmp_path, two_upstreams)
    counts = sweep.main([str(path), "--dry-run"])
    assert counts == {"done": 0, "queued": 0, "running": 0, "todo": 4, "failed": 0, "blocked": 0, "interrupted": 0}
    assert "to do: full" in capsys.readouterr().out
    assert not (tmp_path / "exp" / "results.csv").exists()


@pytest.mark.parametrize("change, message", [
    ({"seeds": []}, "seeds"),
    ({"full": None, "linear": None}, "enable at least one mode"),
    ({"upstreams": [{"name": "a", "model": "A", "sparsity": 0.1}]}, "exactly one of 'path'"),
    ({"upstreams": [{"name": "a", "model": "A", "sparsity": 0.1, "path": "x", "colour": 1}]}, "colour"),
    ({"options": {"image_size": 16, "wokers": 0}}, "wokers"),
])
def test_bad_study_files_give_clear_errors(tmp_path, two_upstreams, change, message, capsys):
    path = write_study(tmp_path, change.pop("upstreams", two_upstreams), **change)
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([str(path), "--dry-run"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and str(path) in err and "Traceback" not in err


def test_shipped_study_files_validate():
    for path in sorted(Path("configs/studies").glob("*.yaml")):
        assert load_study(path).seeds


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_workers_die_with_a_killed_sweep(tmp_path, two_upstreams):
    (tmp_path / "long.yaml").write_text("epochs: 500\nbatch_size: 32\noptimizer: {name: sgd, lr: 0.05}\n"
                                        "schedule: {name: constant}\n")
    path = write_study(tmp_path, two_upstreams, full={"trainer_config_path": str(tmp_path / "long.yaml")})
    proc = subprocess.Popen([sys.executable, "sweep.py", str(path), "--jobs", "2", "--no-report"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        workers: list[int] = []
        while time.time() < deadline and len(list((tmp_path / "exp").glob("full/*/*/metrics.jsonl"))) < 2:
            time.sleep(0.5)
        workers = [c for c in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) == 2, "two workers running cells"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.5)
    assert not any(_alive(w) for w in workers), "workers outlived their sweep"


def test_the_time_by_phase_line_adds_up():
    from utils.studies.sweep import phase_line

    line = phase_line({"upstreams": 100.0, "full cells": 50.0, "linear cells": 20.0, "report": 5.0}, total=180.0)
    assert line == ("time by phase: upstreams 100 s, full cells 50 s, linear cells 20 s, report 5 s, other 5 s "
                    "(total 180 s)")


def test_cells_whose_data_changed_are_named_and_rerun_on_request(tmp_path, two_upstreams, capsys):
    from tests.data.test_datasets import make_folders, write_image

    make_folders(tmp_path / "data")
    path = write_study(tmp_path, two_upstreams[:1], seeds=[1],
                       datasets=[{"name": "imagefolder", "path": str(tmp_path / "data")}],
                       options={"image_size": 16, "workers": 0, "batch_size": 4})
    sweep.main([str(path), "--no-report", "--jobs", "1"])
    assert "data changed" not in capsys.readouterr().out
    sweep.main([str(path), "--no-report", "--jobs", "1"])
    assert "ran 0 cells" in capsys.readouterr().out and "data changed" not in capsys.readouterr().out

    write_image(tmp_path / "data" / "train" / "dog" / "dog_0.jpg", size=(20, 16), seed=42)   # replaced in place
    counts = sweep.main([str(path), "--no-report", "--jobs", "1"])
    out = capsys.readouterr().out
    assert "data changed since it ran: full   imagefolder  dense" in out and "run the sweep with --rerun-stale" in out
    assert counts["done"] == 1 and "ran 0 cells" in out

    counts = sweep.main([str(path), "--no-report", "--jobs", "1", "--rerun-stale"])
    out = capsys.readouterr().out
    assert "its run set aside as" in out and "[1/1] done" in out and counts["done"] == 1
    assert len(list((tmp_path / "exp" / "full" / "imagefolder").glob("dense_seed1_*.stale-*"))) == 1
    rows = list(csv.DictReader(open(tmp_path / "exp" / "results.csv")))
    assert len(rows) == 1 and Path(rows[0]["run_dir"]).exists(), "the set-aside run's row left the table"
    sweep.main([str(path), "--no-report", "--jobs", "1"])
    assert "data changed" not in capsys.readouterr().out


def test_a_slurm_sweep_that_cannot_submit_says_so_in_one_line(tmp_path, two_upstreams, capsys, monkeypatch):
    """No Slurm here (no sbatch on the PATH)."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    path = write_study(tmp_path, two_upstreams[:1], seeds=[5])
    with pytest.raises(SystemExit) as end:
        sweep.main([str(path), "--executor", "slurm", "--no-report"])
    err = capsys.readouterr().err
    assert end.value.code == 2 and "error: --executor slurm: no sbatch on this machine's PATH" in err, err
    assert "Traceback" not in err
    study = load_study(path)
    (cell,) = expand(study, resolve_upstreams(study, make=False, progress=lambda s: None))[0]
    assert cell_status(cell) == "todo" and not (cell.run_dir / "slurm_job.json").exists()
