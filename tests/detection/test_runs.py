"""Detection runs through main.py: the seed-001 recipe as written (shortened by --recipe_args) on a tiny YOLO
tree keeps every zero bit for bit, quantizes at the end, records mAP; resume equals an uninterrupted run."""
import csv
import json

import pytest
import torch

import main
from policies.loggers import CheckpointSaver
from tests.detection.conftest import write_sparse_yolov5n
from utils.checkpoints import load_checkpoint
from utils.data.yolo import load_detection_datasets
from utils.deploy import export_checkpoint
from utils.paths import RECIPE_DIR, TRAINER_DIR

SHORT = '{"num_epochs": 3, "warmup_epochs": 1, "quantization_start_epoch": 2}'

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def sparse_yolo(tmp_path):
    path = tmp_path / "yolov5n_sparse.pt"
    return path, write_sparse_yolov5n(path)


def run(tmp_path, data_yaml, ckpt, *extra):
    return main.main(["--dset", "yolo", "--dset_path", str(data_yaml), "--config_path",
                      str(TRAINER_DIR / "yolov5_finetune.yaml"), "--from_checkpoint_path", str(ckpt),
                      "--recipe", str(RECIPE_DIR / "yolov5_sparse_transfer.yaml"), "--recipe_args", SHORT,
                      "--image_size", "64", "--batch_size", "4", "--experiment_root_path", str(tmp_path / "exp"),
                      "--workers", "0", "--no_progress", "--manual_seed", "1", *extra])


def test_sparse_transfer_of_a_detector_with_the_seed_recipe(tmp_path, yolo_tree, sparse_yolo, capsys):
    ckpt, zeros = sparse_yolo
    # one optimizer step per batch (yolov5_finetune.yaml's nominal 64 would make the tiny epochs one step each)
    record = run(tmp_path, yolo_tree, ckpt, "--exp_name", "det", "--accumulate_steps", "1")
    assert record["task"] == "detection" and 0.0 <= record["map"] <= 1.0 and record["val_acc"] == ""
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])       # the detector's scores, not acc
    assert printed["map"] == record["map"] and "map50" in printed and "val_acc" not in printed
    assert record["epochs"] == 3 and record["model"] == "YOLOv5"
    loaded = load_checkpoint(tmp_path / "exp" / "det" / "model.pt", keep_classifier=True)
    state = dict(loaded.model.named_parameters())
    for name, was_zero in zeros.items():        # every upstream zero is still zero, and only those
        assert torch.equal(state[name].detach() == 0, was_zero), name
    assert loaded.extra["quantization"]["modules"] and loaded.num_classes == 2
    assert not any(n.startswith("model.24") for n in loaded.extra["quantization"]["modules"])
    rows = list(csv.DictReader((tmp_path / "exp" / "results.csv").open()))
    assert rows[0]["task"] == "detection" and float(rows[0]["map50"]) >= 0
    epochs = [json.loads(line) for line in (tmp_path / "exp" / "det" / "metrics.jsonl").read_text().splitlines()]
    # SparseML's order: the cosine (ending last) overrides SetLearningRateModifier's quantization_lr as it does there
    assert 0.000384 < epochs[-1]["lr"] < 0.0032
    groups = torch.load(tmp_path / "exp" / "det" / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.0, 0.0005, 0.0]     # YOLOv5's groups: BN weights, weights, biases
    # export: fp32 and INT8 ONNX; ONNX Runtime's boxes against torch's on the val images
    data = load_detection_datasets(yolo_tree, imgsz=64)
    images = torch.stack([data.test[i][0] for i in range(len(data.test))])
    report = export_checkpoint(tmp_path / "exp" / "det" / "model.pt", tmp_path / "onnx", inputs=images)
    assert report["fp32"]["box_agreement"] == 1.0 and report["fp32"]["max_abs_diff"] < 1e-2
    assert report["int8"]["box_agreement"] >= 0.9 and report["int8"]["boxes"] > 0
    assert report["int8"]["bytes"] < report["fp32"]["bytes"] / 2
    scored = main.main(["--dset", "yolo", "--dset_path", str(yolo_tree), "--config_path",
                        str(TRAINER_DIR / "yolov5_finetune.yaml"), "--from_checkpoint_path",
                        str(tmp_path / "exp" / "det" / "model.pt"), "--eval_only", "--image_size", "64",
                        "--experiment_root_path", str(tmp_path / "exp"), "--workers", "0", "--no_progress"])
    assert 0.0 <= scored["map"] <= 1.0 and scored["dset"] == "tiny_yolo"


def test_a_detection_run_resumed_after_a_kill_equals_an_uninterrupted_one(tmp_path, yolo_tree, sparse_yolo,
                                                                          monkeypatch):
    ckpt, _ = sparse_yolo
    whole = run(tmp_path, yolo_tree, ckpt, "--exp_name", "whole")
    calls = {"n": 0}
    original = CheckpointSaver.on_epoch_end

    def die_after_first(self, state):
        original(self, state)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(CheckpointSaver, "on_epoch_end", die_after_first)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, yolo_tree, ckpt, "--exp_name", "killed")
    monkeypatch.setattr(CheckpointSaver, "on_epoch_end", original)
    resumed = run(tmp_path, yolo_tree, ckpt, "--exp_name", "killed", "--resume")
    assert resumed["map"] == whole["map"] and resumed["test_loss"] == whole["test_loss"]
    a = torch.load(tmp_path / "exp" / "whole" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "exp" / "killed" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_classifier_on_yolo_data_is_one_line(tmp_path, yolo_tree, capsys):
    with pytest.raises(SystemExit):
        main.main(["--dset", "yolo", "--dset_path", str(yolo_tree), "--config_path",
                   str(TRAINER_DIR / "yolov5_finetune.yaml"), "--arch", "resnet_small",
                   "--experiment_root_path", str(tmp_path / "exp"), "--workers", "0", "--no_progress"])
    assert "detectors (yolov5*) train on YOLO data" in capsys.readouterr().err


def test_a_data_yaml_given_as_the_dataset_names_the_run_by_its_folder():
    from utils.runs.options import FullOptions
    from utils.runs.plan import run_dir_of

    def run_name(**options) -> str:
        return run_dir_of(FullOptions(trainer_config_path="t.yaml", seed=3, **options)).name

    assert run_name(dataset="/data/voc/data.yaml", from_checkpoint_path="yolov5s_pruned.pt") == \
        "voc_yolov5s_pruned_seed3"
    assert run_name(dataset="yolo", dataset_path="/data/voc/data.yaml") == "voc_model_seed3"   # was yolo_...
    assert run_name(dataset="yolo") == "yolo_model_seed3"
