"""Seed 001's YOLOv5 command (`train.py --weights zoo:... --sparsification-recipe zoo:... --data ...`) through
`python -m utils.sparseml yolov5 train`, the stubs registered in a temporary zoo."""
import shlex
from pathlib import Path

import pytest
import yaml

from tests.detection.conftest import write_sparse_yolov5n
from utils.paths import RECIPE_DIR
from utils.sparseml.__main__ import main
from utils.sparsify.zoo import ZOO_ENV

STUB = "cv/detection/yolov5-s/pytorch/ultralytics/coco/prunedXXX_quant-none"
SEED_001 = f"""python3 train.py \\
  --weights zoo:{STUB}?recipe_type=transfer_learn \\
  --sparsification-recipe zoo:{STUB}?recipe_type=transfer_learn \\
  --data VOC.yaml"""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    write_sparse_yolov5n(tmp_path / "yolov5_pruned.pt")
    entry = {"name": "yolov5_pruned", "stub": f"zoo:{STUB}", "path": str(tmp_path / "yolov5_pruned.pt"),
             "arch": "yolov5n", "sparsity": 0.5,
             "recipes": {"transfer_learn": str(RECIPE_DIR / "yolov5_sparse_transfer.yaml")}}
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump({"models": [entry]}))
    monkeypatch.setenv(ZOO_ENV, str(tmp_path / "zoo.yaml"))
    monkeypatch.chdir(tmp_path)


def words(data_yaml):
    return ["yolov5", "train", *shlex.split(SEED_001.replace("\\\n", " ").replace("VOC.yaml", str(data_yaml)))[2:]]


def test_seed_001_runs_as_pasted(tmp_path, zoo, yolo_tree):
    record = main(words(yolo_tree) + ["--imgsz", "64", "--batch-size", "4",
                                      "--recipe-args", '{"warmup_epochs": 1, "quantization_start_epoch": 2}',
                                      "--epochs", "3"])
    run_dir = tmp_path / "runs" / "train" / "exp"
    assert Path(record["run_dir"]).resolve() == run_dir.resolve()
    assert record["task"] == "detection" and record["epochs"] == 3 and record["measured_sparsity"] >= 0.49
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["options"]["recipe"] == str(RECIPE_DIR / "yolov5_sparse_transfer.yaml")
    assert config["checkpoint"]["flavour"] == "yolov5n"
    assert config["options"]["noautoanchor"] is False
    # the guide's step 4, `python3 export.py --weights runs/train/exp/weights/last.pt`: YOLOv5's place for the model
    report = main(["yolov5", "export", "--weights", "runs/train/exp/weights/last.pt", "--imgsz", "64", "--dynamic"])
    assert report["fp32"]["box_agreement"] >= 0.9 and report["int8"]["boxes"] > 0
    assert all((run_dir / "model_export" / f"model_{kind}.onnx").is_file() for kind in ("fp32", "int8"))


@pytest.mark.parametrize("extra, message", [
    (["--include", "torchscript"], "--include torchscript: only onnx is written here"),
    (["--half"], "--half: fp16 ONNX is not written"),
    (["--imgsz", "64", "48"], "--imgsz 64 48: give one size"),
    (["--opset", "12"], "--opset 12: the ONNX files are written in opset 17"),
])
def test_export_flags_that_cannot_be_honoured_are_one_line(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        main(["yolov5", "export", "--weights", str(tmp_path / "runs" / "exp" / "weights" / "last.pt"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err[-1]
    with pytest.raises(SystemExit):              # no such run: says where a run keeps its model
        main(["yolov5", "export", "--weights", str(tmp_path / "runs" / "exp" / "weights" / "last.pt")])
    assert "RUN/model.pt" in capsys.readouterr().err


def test_noautoanchor_reaches_the_run():
    from utils.sparseml.yolov5 import translate

    assert translate(["--data", "d.yaml", "--cfg", "yolov5n.yaml", "--noautoanchor"], prog="t").noautoanchor
    assert not translate(["--data", "d.yaml", "--cfg", "yolov5n.yaml"], prog="t").noautoanchor


def test_cos_lr_picks_the_cosine_trainer_config():
    from utils.sparseml.yolov5 import TRAINER, TRAINER_COS, translate

    assert translate(["--data", "d.yaml", "--cfg", "yolov5n.yaml", "--cos-lr"], prog="t").trainer_config_path == \
        str(TRAINER_COS)
    assert translate(["--data", "d.yaml", "--cfg", "yolov5n.yaml"], prog="t").trainer_config_path == str(TRAINER)


@pytest.mark.parametrize("extra, message", [
    (["--rect"], "--rect True: rectangular batches are not supported"),
    (["--optimizer", "Adam"], "--optimizer Adam: detection uses YOLOv5's SGD here"),
    (["--weights", "", "--cfg", "yolov9.yaml"], "--cfg 'yolov9.yaml': give --weights FILE"),
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
    (["--imgsz", "0"], "--imgsz 0: Input should be greater than or equal to 8"),
    (["--batch-size", "-4"], "--batch-size -4: Input should be greater than 0"),
])
def test_what_cannot_be_honoured_is_one_line(zoo, yolo_tree, capsys, extra, message):
    with pytest.raises(SystemExit):
        main(words(yolo_tree) + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err[-1]


def test_classifier_weights_on_yolo_data_name_the_file(tmp_path, zoo, yolo_tree, capsys, make_sparse_checkpoint):
    make_sparse_checkpoint(tmp_path / "resnet.pt")
    with pytest.raises(SystemExit):
        main(["yolov5", "train", "--data", str(yolo_tree), "--weights", str(tmp_path / "resnet.pt"), "--imgsz", "64"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"the checkpoint {tmp_path / 'resnet.pt'} holds resnet_small, a classifier" in err and "--dset" not in err
