"""One image size per checkpoint (issue 27, item 10): every command trains and probes a checkpoint at the size it
records unless the user gives one, and says which it used."""
import json

import finetune_pre_extracted_features as linear_entry
import main
from models import build_model
from tests.runs.test_bad_inputs import TRAINER
from utils.checkpoints import load_checkpoint, save_native_checkpoint
from utils.sparseml.cli import build_parser as classification_parser
from utils.sparseml.yolov5 import build_parser as yolov5_parser


def upstream_trained_at(path, size: int):
    """A resnet_small (default 32 px) whose file records that it was trained at `size` px, as a run's model.pt."""
    model = build_model("resnet_small", num_classes=4)
    save_native_checkpoint(path, model, arch="resnet_small", arch_kwargs={}, extra={"input_size": size})
    return path


def full(tmp_path, ckpt, *extra):
    (tmp_path / "trainer.yaml").write_text(TRAINER)
    return main.main(["--config_path", str(tmp_path / "trainer.yaml"), "--experiment_root_path", str(tmp_path / "exp"),
                      "--workers", "0", "--no_progress", "--dset", "synthetic", "--from_checkpoint_path", str(ckpt),
                      "--max_train_samples", "16", *extra])


def recorded_size(run_dir) -> int:
    return json.loads((run_dir / "result.json").read_text())["input"]["image_size"]


def test_full_fine_tuning_uses_the_size_the_checkpoint_records_unless_given(tmp_path, caplog):
    ckpt = upstream_trained_at(tmp_path / "up.pt", 20)
    assert load_checkpoint(ckpt).input_size == 20           # what `python -m utils.checkpoints` prints
    with caplog.at_level("INFO", logger="utils.runs.setup"):
        full(tmp_path, ckpt, "--exp_name", "recorded")
    assert recorded_size(tmp_path / "exp" / "recorded") == 20
    assert "image size 20 px (the checkpoint's" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="utils.runs.setup"):
        full(tmp_path, ckpt, "--exp_name", "given", "--image_size", "24")
    assert recorded_size(tmp_path / "exp" / "given") == 24 and "image size 24 px (given)" in caplog.text


def test_linear_probing_uses_the_size_the_checkpoint_records(tmp_path, caplog):
    ckpt = upstream_trained_at(tmp_path / "up.pt", 20)
    with caplog.at_level("INFO", logger="utils.runs"):
        linear_entry.main(["--dataset", "synthetic", "--from_checkpoint_path", str(ckpt), "--workers", "0",
                           "--features_cache", str(tmp_path / "cache"), "--experiment_root_path", str(tmp_path / "exp"),
                           "--no_progress", "--exp_name", "probe"])
    assert recorded_size(tmp_path / "exp" / "probe") == 20 and "image size 20 px (the checkpoint's" in caplog.text


def test_the_sparseml_training_commands_leave_the_size_to_the_checkpoint():
    """SparseML's classification train defaulted to 224 px and YOLOv5's to 640: here both defer to the
    checkpoint (its recorded size) like main.py, and a given size still wins."""
    classification = classification_parser("sparseml.image_classification.train")
    base = ["--recipe-path", "r.yaml", "--dataset-path", "d", "--arch-key", "resnet50", "--dataset", "imagefolder",
            "--train-batch-size", "8", "--test-batch-size", "8"]
    assert classification.parse_args(base).image_size is None
    assert classification.parse_args([*base, "--image-size", "160"]).image_size == 160
    detection = yolov5_parser("sparseml.yolov5.train")
    assert detection.parse_args(["--data", "d.yaml"]).imgsz is None
    assert detection.parse_args(["--data", "d.yaml", "--imgsz", "320"]).imgsz == 320
