"""finetune_pre_extracted_features.py end to end on the synthetic dataset and tiny native checkpoints."""
import csv
import json

import pytest
import torch

import finetune_pre_extracted_features as entry
from utils.runs import RESULT_COLUMNS

SGD = """
epochs: 2
batch_size: 16
optimizer: {name: sgd, lr: 0.01, momentum: 0.9, weight_decay: 0.0005}
schedule: {name: step, milestones_epochs: [1], gamma: 0.1}
"""


@pytest.fixture()
def ckpt(sparse_checkpoint):
    return sparse_checkpoint[0]


def run(tmp_path, ckpt, *extra):
    return entry.main(["--dataset", "synthetic", "--from_checkpoint_path", str(ckpt), "--workers", "0",
                       "--features_cache", str(tmp_path / "cache"), "--experiment_root_path", str(tmp_path / "exp"),
                       "--no_progress", "--image_size", "16", *extra])


def rows(tmp_path):
    with open(tmp_path / "exp" / "results.csv") as f:
        return list(csv.DictReader(f))


def test_lbfgs_run_writes_the_run_dir_and_a_linear_row(tmp_path, ckpt, capsys):
    result = run(tmp_path, ckpt, "--seed", "21", "--model_label", "GMP")
    run_dir = tmp_path / "exp" / "synthetic_up_linear-lbfgs_seed21"
    for name in ("config.yaml", "metrics.jsonl", "classifier.pt", "result.json"):
        assert (run_dir / name).exists(), name
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["val_acc"] == result["val_acc"]
    (row,) = rows(tmp_path)
    assert list(row) == RESULT_COLUMNS
    assert row["finetuning"] == "linear" and row["solver"] == "lbfgs" and row["model"] == "GMP"
    assert row["dset"] == "synthetic" and row["seed"] == "21" and row["sparsity"] == "0.8"
    assert float(row["val_acc"]) == result["val_acc"] and 0 <= result["val_acc"] <= 1
    assert result["measured_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert result["l2"] in [s["l2"] for s in json.loads((run_dir / "result.json").read_text())["l2_grid"]]
    head = torch.load(run_dir / "classifier.pt", weights_only=True)
    assert head["weight"].shape == (4, 64) and head["bias"].shape == (4,)
    assert result["features_reused"] == {"train": False, "test": False}


def test_another_seed_and_solver_reuse_the_cache_and_a_new_checkpoint_does_not(tmp_path, ckpt, caplog,
                                                                                make_sparse_checkpoint):
    run(tmp_path, ckpt, "--seed", "1")
    with caplog.at_level("INFO", logger="utils.linear.features"):
        second = run(tmp_path, ckpt, "--seed", "2", "--solver", "sklearn")
    assert second["features_reused"] == {"train": True, "test": True}
    assert caplog.text.count("reusing cached features") == 2
    make_sparse_checkpoint(ckpt, seed=1)  # same path, new content
    third = run(tmp_path, ckpt, "--seed", "3")
    assert third["features_reused"] == {"train": False, "test": False}
    assert [r["solver"] for r in rows(tmp_path)] == ["lbfgs", "sklearn", "lbfgs"]


def test_sgd_solver_runs_the_trainer_protocol(tmp_path, ckpt):
    trainer = tmp_path / "sgd.yaml"
    trainer.write_text(SGD)
    result = run(tmp_path, ckpt, "--solver", "sgd", "--training_config_path", str(trainer), "--seed", "5")
    run_dir = tmp_path / "exp" / "synthetic_up_linear-sgd_seed5"
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1] and [e["lr"] for e in epochs] == pytest.approx([0.01, 0.001])
    assert epochs[-1]["test_acc"] == pytest.approx(result["val_acc"])
    (row,) = rows(tmp_path)
    assert row["solver"] == "sgd" and row["epochs"] == "2" and row["batch_size"] == "16" and row["lr"] == "0.01"


def test_augmented_onnxruntime_variant(tmp_path, ckpt):
    trainer = tmp_path / "sgd.yaml"
    trainer.write_text(SGD)
    result = run(tmp_path, ckpt, "--solver", "sgd", "--training_config_path", str(trainer), "--augment",
                 "--feature_backend", "onnxruntime", "--epochs", "1")
    assert result["augment"] and result["feature_backend"] == "onnxruntime"
    assert result["features_reused"] == {"test": False}  # training features are never cached when augmented
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1


def test_finished_runs_are_reported_with_resume_and_refused_without(tmp_path, ckpt, capsys):
    first = run(tmp_path, ckpt, "--exp_name", "r")
    assert run(tmp_path, ckpt, "--exp_name", "r", "--resume")["val_acc"] == first["val_acc"]
    with pytest.raises(SystemExit) as exc:
        run(tmp_path, ckpt, "--exp_name", "r")
    assert exc.value.code == 2 and "already holds a finished run" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--solver", "lbfgs", "--augment"], "only the sgd solver"),
    (["--solver", "newton"], "unknown linear solver 'newton'"),
    (["--feature_backend", "tensorrt"], "unknown feature backend"),
])
def test_user_errors_exit_with_one_line(tmp_path, ckpt, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        run(tmp_path, ckpt, *flags)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err


def test_missing_checkpoint_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(tmp_path, tmp_path / "nope.pt")
    assert "file not found" in capsys.readouterr().err


def test_linear_and_full_rows_label_one_file_the_same_way(tmp_path, make_sparse_checkpoint, trainer_config):
    """Issue 12: linear rows said model=native where full rows said Magnitude for the same pruned file."""
    import main
    from utils.checkpoints import prune_checkpoint

    dense = tmp_path / "dense.pt"
    make_sparse_checkpoint(dense, sparsity=0.0)
    pruned = tmp_path / "pruned.pt"
    prune_checkpoint(dense, pruned, sparsity=0.5)
    run(tmp_path, pruned, "--seed", "1")
    trainer = trainer_config(SGD.replace("epochs: 2", "epochs: 1"))
    main.main(["--dset", "synthetic", "--config_path", str(trainer), "--from_checkpoint_path", str(pruned),
               "--experiment_root_path", str(tmp_path / "exp"), "--workers", "0", "--no_progress",
               "--image_size", "16"])
    labels = {r["finetuning"]: r["model"] for r in rows(tmp_path)}
    assert labels == {"linear": "Magnitude", "full": "Magnitude"}


def test_an_image_replaced_in_place_is_extracted_again(tmp_path, ckpt):
    """The cache was keyed by the folder and the number of images: an image replaced in place reused stale
    features."""
    from tests.data.test_datasets import make_folders, write_image

    make_folders(tmp_path / "data")
    args = ["--dataset", "imagefolder", "--dataset_path", str(tmp_path / "data"), "--solver", "sgd",
            "--epochs", "1"]
    first = run(tmp_path, ckpt, *args, "--seed", "1")
    assert run(tmp_path, ckpt, *args, "--seed", "2")["features_reused"] == {"train": True, "test": True}
    write_image(tmp_path / "data" / "test" / "emu" / "emu_t.png", size=(14, 9), seed=99, mode="L")
    third = run(tmp_path, ckpt, *args, "--seed", "3")
    assert third["features_reused"] == {"train": True, "test": False}
    configs = [(tmp_path / "exp" / f"data_up_linear-sgd_seed{s}" / "config.yaml").read_text()   # the folder's name
               for s in (1, 3)]
    assert first["features_reused"] == {"train": False, "test": False} and configs[0] != configs[1]
