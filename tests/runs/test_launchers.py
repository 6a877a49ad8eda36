"""The study's run_*.sh launchers: loop over checkpoints x seeds, isolate failures, skip finished runs."""
import csv
import os
import subprocess
import sys



from utils.paths import REPO_ROOT as REPO  # noqa: E402


def test_full_training_launcher_loops_isolates_failures_and_skips_done(tmp_path, make_sparse_checkpoint):
    good = tmp_path / "good.pt"
    make_sparse_checkpoint(good, sparsity=0.5, num_classes=3)
    env = {**os.environ, "CHECKPOINTS": f"{good} {tmp_path / 'missing.pth'}", "SEEDS": "1 2",
           "EXPERIMENT_ROOT": str(tmp_path / "exp"), "PYTHON": sys.executable}
    cmd = [str(REPO / "run_dataset_generalize_full_training_lr001.sh"), "cpu", "synthetic", "-",
           "--epochs", "1", "--image_size", "16", "--workers", "0", "--no_progress"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode != 0
    assert "2 run(s) failed" in first.stdout, first.stdout + first.stderr
    rows = list(csv.DictReader(open(tmp_path / "exp" / "results.csv")))
    assert sorted(r["seed"] for r in rows) == ["1", "2"]
    assert {r["sparsity"] for r in rows} == {"0.5"}

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert "already finished" in second.stderr
    assert len(list(csv.DictReader(open(tmp_path / "exp" / "results.csv")))) == 2


def test_launcher_usage_error_without_arguments():
    out = subprocess.run([str(REPO / "run_dataset_generalize_full_training_lr01.sh")], capture_output=True, text=True)
    assert out.returncode == 2 and "Usage" in out.stderr


def test_linear_launcher_runs_each_seed_and_isolates_a_bad_checkpoint(tmp_path, make_sparse_checkpoint):
    good = tmp_path / "good.pt"
    make_sparse_checkpoint(good, sparsity=0.5, num_classes=3)
    env = {**os.environ, "CHECKPOINTS": f"{good} {tmp_path / 'missing.pth'}", "SEEDS": "1 2",
           "EXPERIMENT_ROOT": str(tmp_path / "exp"), "FEATURES_CACHE": str(tmp_path / "cache"),
           "PYTHON": sys.executable}
    cmd = [str(REPO / "run_dataset_generalize_preextracted.sh"), "cpu", "synthetic", "-",
           "--image_size", "16", "--workers", "0", "--no_progress", "--normalization", "checkpoint"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0 and "2 run(s) failed" in out.stdout, out.stdout + out.stderr
    rows = list(csv.DictReader(open(tmp_path / "exp" / "results.csv")))
    assert sorted(r["seed"] for r in rows) == ["1", "2"]
    assert {r["finetuning"] for r in rows} == {"linear"} and {r["solver"] for r in rows} == {"lbfgs"}
