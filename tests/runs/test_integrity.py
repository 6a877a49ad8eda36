"""Nothing lost, nothing doubled: every crash window of a run's end, other spellings and moves of the experiment
root, locks, a results.csv that could not take the row, duplicate metrics, deterministic checkpoint files."""
import csv
import hashlib
import json
import os
import shutil
import time

import pandas as pd
import pytest
import torch

import main
import sweep
import utils.runs.dirs as dirs
import utils.runs.record as record
from models import build_model
from policies.loggers import CheckpointSaver
from utils.checkpoints import save_native_checkpoint
from utils.io import atomic_write_text, exclusive_lock

TRAINER = """
epochs: 2
batch_size: 16
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
schedule: {name: constant}
"""


@pytest.fixture()
def setup(tmp_path, sparse_checkpoint, trainer_config):
    ckpt, _ = sparse_checkpoint
    trainer = trainer_config(TRAINER)

    def run(*extra, root=None):
        return main.main(["--dset", "synthetic", "--config_path", str(trainer), "--from_checkpoint_path", str(ckpt),
                          "--experiment_root_path", str(root or tmp_path / "exp"), "--workers", "0", "--no_progress",
                          "--image_size", "16", "--exp_name", "r", *extra])

    return run


def rows(root):
    with open(root / "results.csv") as f:
        return list(csv.DictReader(f))


def then_die(original):
    def wrapped(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt("killed")
    return wrapped


def last_epoch_checkpoint_then_die(original):
    def wrapped(self, state):
        original(self, state)
        if state.epoch == state.num_epochs - 1:
            raise KeyboardInterrupt("killed")
    return wrapped


KILL_POINTS = {   # each step of the end-of-run sequence, killed right after it
    "checkpoint": (CheckpointSaver, "on_epoch_end", last_epoch_checkpoint_then_die),
    "model.pt": (record, "save_native_checkpoint", then_die),
    "result.json": (dirs, "atomic_write_json", then_die),
    "results.csv row": (dirs, "append_csv_row", then_die),
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_a_kill_at_each_point_of_the_end_of_a_run_resumes_to_exactly_one_row(tmp_path, setup, monkeypatch, point):
    owner, name, wrap = KILL_POINTS[point]
    with monkeypatch.context() as m:
        m.setattr(owner, name, wrap(getattr(owner, name)))
        with pytest.raises(KeyboardInterrupt):
            setup()
    first = setup("--resume")
    again = setup("--resume")
    assert len(rows(tmp_path / "exp")) == 1 and first["val_acc"] == again["val_acc"]
    assert (tmp_path / "exp" / "r" / "result.json").exists() and (tmp_path / "exp" / "r" / "model.pt").exists()


def test_another_spelling_a_move_or_a_copy_of_the_root_never_doubles_a_row(tmp_path, setup, monkeypatch):
    setup()
    monkeypatch.chdir(tmp_path)
    setup("--resume", root="exp")                   # relative spelling
    setup("--resume", root=str(tmp_path / "exp" / ".." / "exp"))
    assert len(rows(tmp_path / "exp")) == 1
    shutil.copytree(tmp_path / "exp", tmp_path / "copied")
    setup("--resume", root=tmp_path / "copied")
    assert len(rows(tmp_path / "copied")) == 1


def test_a_row_records_where_its_run_is_now_absolute(tmp_path, setup, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert setup(root="exp")["run_dir"] == str(tmp_path / "exp" / "r")          # a relative root
    assert rows(tmp_path / "exp")[0]["run_dir"] == str(tmp_path / "exp" / "r")
    shutil.move(tmp_path / "exp", tmp_path / "moved")
    result = setup("--resume", root="moved")
    here = str(tmp_path / "moved" / "r")
    assert result["run_dir"] == here and [r["run_dir"] for r in rows(tmp_path / "moved")] == [here]
    assert json.loads((tmp_path / "moved" / "r" / "result.json").read_text())["run_dir"] == here


def test_a_cut_off_row_is_set_aside_with_a_warning(tmp_path, setup, caplog):
    setup()
    table = tmp_path / "exp" / "results.csv"
    whole = table.read_text()
    table.write_text(whole + whole.splitlines()[1][:40] + "\n")       # a second row cut off by a killed writer
    with caplog.at_level("WARNING"):
        setup("--exp_name", "r2")
    assert [r["run_dir"] for r in rows(tmp_path / "exp")] == [str(tmp_path / "exp" / n) for n in ("r", "r2")]
    assert (tmp_path / "exp" / "results.csv.damaged").read_text() == whole.splitlines()[1][:40] + "\n"
    assert [r for r in caplog.records if "results.csv:3: a cut-off row" in r.getMessage()]
    assert len(pd.read_csv(table)) == 2


def test_a_finished_run_is_reported_only_for_the_settings_it_was_made_with(tmp_path, setup, trainer_config, capsys):
    """--resume of a finished run with another --lr (or an edited trainer config) returned the old result as if
    it were the new setting's."""
    first = setup()
    assert setup("--resume", "--workers", "1")["val_acc"] == first["val_acc"]   # how a run goes may change
    with pytest.raises(SystemExit) as exit_info:
        setup("--resume", "--lr", "0.5")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "other settings" in err and "options.lr" in err
    trainer_config(TRAINER.replace("momentum: 0.9", "momentum: 0.5"))     # the same file, edited
    with pytest.raises(SystemExit):
        setup("--resume")
    assert "trainer.optimizer" in capsys.readouterr().err
    assert len(rows(tmp_path / "exp")) == 1


def test_an_unfinished_run_resumes_in_a_moved_root(tmp_path, setup, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(CheckpointSaver, "on_epoch_end", then_die(CheckpointSaver.on_epoch_end))  # after epoch 0
        with pytest.raises(KeyboardInterrupt):
            setup()
    shutil.move(tmp_path / "exp", tmp_path / "moved")
    result = setup("--resume", root=tmp_path / "moved")
    assert len(rows(tmp_path / "moved")) == 1 and result["run_dir"] == str(tmp_path / "moved" / "r")
    lines = (tmp_path / "moved" / "r" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_a_kill_between_the_metrics_line_and_the_checkpoint_leaves_no_duplicate_epoch(tmp_path, setup, monkeypatch):
    def die_before_saving(self, state):
        if state.epoch == 1:
            raise KeyboardInterrupt("killed")        # metrics.jsonl has epoch 1, checkpoint.pt only epoch 0
        return original(self, state)

    original = CheckpointSaver.on_epoch_end
    with monkeypatch.context() as m:
        m.setattr(CheckpointSaver, "on_epoch_end", die_before_saving)
        with pytest.raises(KeyboardInterrupt):
            setup()
    setup("--resume")
    lines = (tmp_path / "exp" / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]


def test_a_run_directory_in_use_is_refused_and_a_stale_lock_is_taken_over(tmp_path, setup, capsys):
    run_dir = tmp_path / "exp" / "r"
    with exclusive_lock(run_dir / ".lock", what="test"):
        with pytest.raises(SystemExit):
            setup()
    err = capsys.readouterr().err
    assert f"process {os.getpid()}" in err and "in use" in err and "Traceback" not in err
    (run_dir / ".lock").write_text("process 999999 on a-dead-host")     # left by a killed process: no kernel lock
    setup()
    assert len(rows(tmp_path / "exp")) == 1


def test_a_sweep_in_progress_is_not_run_twice(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(f"name: s\nexperiment_root: {tmp_path / 'exp'}\nseeds: [0]\nupstreams:\n"
                     f"  - {{name: a, model: A, sparsity: 0.0, path: {tmp_path / 'missing.pt'}}}\n"
                     "datasets: [{name: synthetic}]\nlinear: {}\n")
    with exclusive_lock(tmp_path / "exp" / ".sweep.lock", what="test"):
        with pytest.raises(SystemExit) as exit_info:
            sweep.main([str(study)])
    assert exit_info.value.code == 2 and "in use by process" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:          # the missing upstream: a non-zero exit
        sweep.main([str(study)])
    assert exit_info.value.code == 1 and "1 upstream(s) missing" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ("dset,model,sparsity\nx,y,0.5\n", "its header lacks the columns"),
    (b"dset,model\n\xff\xfe\n", "not valid UTF-8"),
])
def test_a_results_table_that_cannot_take_the_row_fails_before_training(tmp_path, setup, capsys, content, message):
    table = tmp_path / "exp" / "results.csv"
    table.parent.mkdir(parents=True)
    table.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SystemExit):
        setup()
    assert message in capsys.readouterr().err
    assert not (tmp_path / "exp" / "r" / "checkpoint.pt").exists(), "nothing was trained"


def test_a_row_is_never_fused_onto_an_unterminated_last_line(tmp_path, setup):
    setup()
    table = tmp_path / "exp" / "results.csv"
    table.write_text(table.read_text().rstrip("\n"))
    setup("--exp_name", "r2")
    assert len(pd.read_csv(table)) == 2


def test_an_exp_name_cannot_leave_the_experiment_root(tmp_path, setup, capsys):
    with pytest.raises(SystemExit):
        setup("--exp_name", "../escaped")
    assert "must be a name inside --experiment_root_path" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists()


def test_identical_checkpoints_are_identical_files(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=3)
    paths = [tmp_path / "one" / "same.pt", tmp_path / "two" / "same.pt"]
    for path in paths:
        save_native_checkpoint(path, model, arch="resnet_small", arch_kwargs={})
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}) == 1


def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_rows_dropped_atomically_and_an_append_waiting_meanwhile_lands_in_the_new_table(tmp_path):
    """drop_csv_rows renames a new table over the old one; an appender that opened the old file and waited for its
    lock must not write into the replaced (unlinked) file."""
    import fcntl
    import threading

    from utils.io import append_csv_row, drop_csv_rows

    table = tmp_path / "results.csv"
    for i in range(3):
        append_csv_row(table, {"run_dir": f"r{i}", "val_acc": i})
    with open(table) as held:                       # hold the appenders' lock while the table is replaced
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = threading.Thread(target=append_csv_row, args=(table, {"run_dir": "r3", "val_acc": 3}))
        waiting.start()
        time.sleep(0.3)                              # it has opened the old file and waits for the lock
        rows = list(csv.reader(open(table)))
        atomic_write_text(table, "run_dir,val_acc\r\n" + "".join(f"{a},{b}\r\n" for a, b in rows[1:] if a != "r1"))
        fcntl.flock(held, fcntl.LOCK_UN)
    waiting.join(10)
    assert [r["run_dir"] for r in csv.DictReader(open(table))] == ["r0", "r2", "r3"]
    assert drop_csv_rows(table, lambda row: row["run_dir"] in ("r0", "r3")) == 2
    assert list(csv.DictReader(open(table))) == [{"run_dir": "r2", "val_acc": "2"}]
    assert drop_csv_rows(tmp_path / "none.csv", lambda row: True) == 0
