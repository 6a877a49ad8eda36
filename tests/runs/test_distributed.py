"""DDP: `torchrun --nproc_per_node 2 main.py` on CPU (gloo) keeps masks exact and matches one process.

Tolerance: both runs see the same data, global batch and schedule, but the two ranks' BatchNorm
statistics and the sampler's order differ from a single process, so the final test accuracy may differ
by at most 0.1 (absolute) on the synthetic task, and both must learn it (accuracy >= 0.9).
"""
import csv
import os
import socket
import subprocess
import sys

import torch

from utils.paths import REPO_ROOT as REPO  # noqa: E402

TRAINER = """
epochs: 3
batch_size: 16
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0005}
schedule: {name: step, milestones_epochs: [2]}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_keeps_masks_and_matches_single_process(tmp_path, make_sparse_checkpoint):
    ckpt = tmp_path / "up.pt"
    masks = make_sparse_checkpoint(ckpt, sparsity=0.7, num_classes=4, widths=[8, 16, 16])
    (tmp_path / "t.yaml").write_text(TRAINER)
    args = ["main.py", "--dset", "synthetic", "--config_path", str(tmp_path / "t.yaml"), "--from_checkpoint_path",
            str(ckpt), "--experiment_root_path", str(tmp_path / "exp"), "--workers", "0", "--manual_seed", "1",
            "--image_size", "16", "--no_progress", "--cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args, "--exp_name", "ddp"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, *args, "--exp_name", "single"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    rows = {r["run_dir"].split("/")[-1]: r for r in csv.DictReader(open(tmp_path / "exp" / "results.csv"))}
    assert set(rows) == {"ddp", "single"}  # only rank 0 wrote a row
    acc_ddp, acc_single = float(rows["ddp"]["val_acc"]), float(rows["single"]["val_acc"])
    assert acc_ddp >= 0.9 and acc_single >= 0.9
    assert abs(acc_ddp - acc_single) <= 0.1
    state = torch.load(tmp_path / "exp" / "ddp" / "model.pt", weights_only=True)["state_dict"]
    for name, mask in masks.items():
        assert torch.equal(state[name] == 0, ~mask), name
    assert len((tmp_path / "exp" / "ddp" / "metrics.jsonl").read_text().splitlines()) == 3
