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
           "--epochs", "1", "--image_size", "16", "--workers", "0", "--no_progress", "--max_train_samples", "32"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode != 0
    assert "2 run(s) failed" in first.stdout, first.stdout + first.stderr
    assert f"error: checkpoint not found: {tmp_path / 'missing.pth'}" in first.stderr
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


def list_checkpoints(env: dict[str, str]) -> subprocess.CompletedProcess:
    script = f'source "{REPO / "utils/launch/common.sh"}"; list_checkpoints'
    clean = {k: v for k, v in os.environ.items() if k not in ("CHECKPOINTS", "CHECKPOINTS_FILE", "CKPT_DIR")}
    return subprocess.run(["bash", "-c", script], env={**clean, **env}, capture_output=True, text=True)


def test_a_directory_of_links_to_shared_storage_is_scanned(tmp_path):
    """Issue 12: `find -type f` skipped symlinked checkpoints, the usual cluster set-up."""
    shared, links = tmp_path / "shared storage", tmp_path / "links"
    shared.mkdir(), links.mkdir()
    for name in ("gmp.pth", "acdc.pt"):
        (shared / name).write_bytes(b"x")
        (links / name).symlink_to(shared / name)
    (links / "notes.txt").write_text("not a checkpoint")
    out = list_checkpoints({"CKPT_DIR": str(links)})
    assert out.returncode == 0 and out.stdout.splitlines() == [str(links / "acdc.pt"), str(links / "gmp.pth")]
    (links / "gone.pth").symlink_to(shared / "deleted.pth")
    out = list_checkpoints({"CKPT_DIR": str(links)})
    assert out.returncode == 2 and "broken link" in out.stderr and "gone.pth" in out.stderr


def test_a_directory_of_run_directories_is_scanned_without_their_training_state(tmp_path):
    """Issue 27 item 4: `make demo`'s upstreams are RUN/model.pt; only the top level was scanned."""
    root = tmp_path / "upstream"
    for run in ("gmp_90_47ad", "acdc_90_d8e7"):
        (root / run).mkdir(parents=True)
        (root / run / "model.pt").write_bytes(b"x")
        (root / run / "checkpoint.pt").write_bytes(b"x")          # training state: not an upstream
    (root / "magnitude_90.pt").write_bytes(b"x")
    out = list_checkpoints({"CKPT_DIR": str(root)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [str(root / "acdc_90_d8e7" / "model.pt"), str(root / "gmp_90_47ad" / "model.pt"),
                                       str(root / "magnitude_90.pt")]
    assert "skipped 2 training-state file(s)" in out.stderr


def test_a_checkpoints_file_takes_one_entry_per_line_with_spaces_and_flavours(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# our upstreams\n/data/my models/gmp 90.pth\n\n  /data/rigl.pth:rigl_resnet50  \r\n")
    out = list_checkpoints({"CHECKPOINTS_FILE": str(listing), "CHECKPOINTS": "ignored.pth"})
    assert out.stdout.splitlines() == ["/data/my models/gmp 90.pth", "/data/rigl.pth:rigl_resnet50"]
    listing.write_text("/a/model.pth\n/b/model.pth\n")         # run directories' model files: named by folder
    out = list_checkpoints({"CHECKPOINTS_FILE": str(listing)})
    assert out.returncode == 0 and out.stdout.splitlines() == ["/a/model.pth", "/b/model.pth"]
    listing.write_text("/x/gmp.pth\n/y/gmp.pt\n")
    out = list_checkpoints({"CHECKPOINTS_FILE": str(listing)})
    assert out.returncode == 2 and "two checkpoints would name their runs gmp" in out.stderr
    out = list_checkpoints({"CHECKPOINTS_FILE": str(tmp_path / "nope.txt")})
    assert out.returncode == 2 and "nope.txt not found" in out.stderr


def test_a_checkpoint_path_with_spaces_runs_end_to_end(tmp_path, make_sparse_checkpoint):
    ckpt = tmp_path / "my models" / "gmp 50.pt"
    make_sparse_checkpoint(ckpt, sparsity=0.5, num_classes=3)
    (tmp_path / "list.txt").write_text(f"{ckpt}:native\n")
    env = {**os.environ, "CHECKPOINTS_FILE": str(tmp_path / "list.txt"), "SEEDS": "1",
           "EXPERIMENT_ROOT": str(tmp_path / "exp"), "PYTHON": sys.executable}
    cmd = [str(REPO / "run_dataset_generalize_full_training_lr001.sh"), "cpu", "synthetic", "-",
           "--epochs", "1", "--image_size", "16", "--workers", "0", "--no_progress"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "0 run(s) failed" in out.stdout, out.stdout + out.stderr
    rows = list(csv.DictReader(open(tmp_path / "exp" / "results.csv")))
    assert len(rows) == 1 and rows[0]["checkpoint"] == str(ckpt) and rows[0]["flavour"] == "native"
    assert (tmp_path / "exp" / "synthetic_gmp 50_seed1" / "result.json").exists()


def test_the_onnxruntime_linear_launcher_takes_a_gpu_argument_like_the_others(tmp_path, make_sparse_checkpoint):
    """Issue 27 item 8: `... GPU DATASET DATA_PATH` as every launcher (the head trains there, the backbone runs in
    ONNX Runtime), and the old `DATASET DATA_PATH` still works; its environment variables are honoured."""
    up = tmp_path / "up.pt"
    make_sparse_checkpoint(up, sparsity=0.5, num_classes=3)
    trainer = tmp_path / "sgd.yaml"
    trainer.write_text("epochs: 1\nbatch_size: 16\noptimizer: {name: sgd, lr: 0.01}\nschedule: {name: constant}\n")
    env = {**os.environ, "CHECKPOINTS": str(up), "SEEDS": "3", "EXPERIMENT_ROOT": str(tmp_path / "exp"),
           "FEATURES_CACHE": str(tmp_path / "cache"), "TRAINING_CONFIG": str(trainer), "PYTHON": sys.executable}
    script = str(REPO / "run_dataset_generalize_linear_finetuning_onnxruntime.sh")
    flags = ["--image_size", "16", "--workers", "0", "--no_progress", "--max_train_samples", "32"]
    for head in (["cpu", "synthetic", "-"], ["synthetic", "-"]):
        out = subprocess.run([script, *head, *flags], env=env, capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
    (row,) = csv.DictReader(open(tmp_path / "exp" / "results.csv"))     # the second call found the run finished
    assert row["solver"] == "sgd" and row["seed"] == "3" and row["dset"] == "synthetic"
    usage = subprocess.run([script, "cpu"], capture_output=True, text=True)
    assert usage.returncode == 2 and "[GPU] DATASET DATA_PATH" in usage.stderr
