"""What watches a run: progress off a terminal (one line per epoch) and Weights & Biases in offline mode."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
import wandb

import main
from policies.loggers import CheckpointSaver

TRAINER = "epochs: 2\nbatch_size: 16\noptimizer: {name: sgd, lr: 0.05}\nschedule: {name: constant}\n"


def run(tmp_path: Path, *extra: str):
    trainer = tmp_path / "trainer.yaml"
    trainer.write_text(TRAINER)
    return main.main(["--dset", "synthetic", "--arch", "resnet_small", "--config_path", str(trainer),
                      "--experiment_root_path", str(tmp_path / "exp"), "--exp_name", "r", "--workers", "0",
                      "--image_size", "16", "--manual_seed", "2", *extra])


def test_off_a_terminal_progress_is_one_log_line_per_epoch(tmp_path, capsys, caplog):
    """Issue 12: in a Slurm log every bar redraw was a new line (thousands in the demo's log)."""
    with caplog.at_level("INFO", logger="policies.loggers"):
        run(tmp_path)                                # progress on; pytest's stderr is not a terminal
    err = capsys.readouterr().err
    assert "batch/s" not in err and "|" not in err, err[:500]
    lines = [r.getMessage() for r in caplog.records if r.name == "policies.loggers"]
    assert [line.split(":")[0] for line in lines] == ["r epoch 1/2", "r epoch 2/2"]
    assert all("train_loss=" in line and "test_acc=" in line for line in lines)


# -- Weights & Biases -------------------------------------------------------------------------------------

def wandb_records(run_file: Path):
    """The records of an offline run's .wandb file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, parts = run_file.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B", run_file
    while pos + 7 <= len(data):
        if block - pos % block < 7:                  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):                           # FULL, or LAST of FIRST/MIDDLE/LAST
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def offline_runs(run_dir: Path) -> list[dict]:
    """Each offline run under run_dir/wandb: its id, config keys and logged epochs."""
    found = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        info = {"id": path.stem.removeprefix("run-"), "config": {}, "history": []}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":           # the config: in the run record, or in config records after it (wandb
                info["config"].update({u.key: json.loads(u.value_json) for u in record.run.config.update})
            elif kind == "config":      # sends it so when its service is slow to start, as under a busy machine)
                info["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
            elif kind == "history":
                info["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                        for i in record.history.item})
        found.append(info)
    return found


@pytest.fixture()
def offline_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_use_wandb_writes_an_offline_run_with_the_config_and_every_epoch(tmp_path, offline_wandb):
    result = run(tmp_path, "--use_wandb", "--no_progress")
    run_dir = Path(result["run_dir"])
    (wb,) = offline_runs(run_dir)
    assert wb["config"]["options"]["dataset"] == "synthetic" and wb["config"]["trainer"]["epochs"] == 2
    assert wb["config"]["git_commit"]
    logged = [{k: h[k] for k in ("epoch", "train_loss", "test_acc", "lr")} for h in wb["history"]]
    on_disk = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == [{k: m[k] for k in ("epoch", "train_loss", "test_acc", "lr")} for m in on_disk]
    assert [h["_step"] for h in wb["history"]] == [m["step"] for m in on_disk]


def killed_after_the_first_epoch(tmp_path, monkeypatch, *extra: str) -> None:
    original = CheckpointSaver.on_epoch_end

    def save_then_die(self, state):
        original(self, state)
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as m:
        m.setattr(CheckpointSaver, "on_epoch_end", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, "--no_progress", *extra)
    wandb.finish(exit_code=1)                        # what the killed process's exit does to its wandb run


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, offline_wandb, monkeypatch):
    killed_after_the_first_epoch(tmp_path, monkeypatch, "--use_wandb")
    run(tmp_path, "--use_wandb", "--no_progress", "--resume")
    runs = offline_runs(tmp_path / "exp" / "r")
    assert len(runs) == 2 and runs[0]["id"] == runs[1]["id"]
    assert [h["epoch"] for wb in runs for h in wb["history"]] == [0, 1]


def test_wandb_may_be_switched_on_when_resuming(tmp_path, offline_wandb, monkeypatch):
    killed_after_the_first_epoch(tmp_path, monkeypatch)
    result = run(tmp_path, "--use_wandb", "--no_progress", "--resume")
    deadline = time.monotonic() + 20        # wandb's service process may still be writing the file under load
    while not offline_runs(Path(result["run_dir"]))[0]["history"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [h["epoch"] for h in offline_runs(Path(result["run_dir"]))[0]["history"]] == [1]
