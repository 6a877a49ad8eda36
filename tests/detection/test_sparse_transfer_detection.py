"""sparse_transfer.py --use-case detection: the zoo's detector for the optim level, the seed-001 recipe, export,
ONNX Runtime latency against dense, and a summary with mAP."""
import pytest
import yaml

import sparse_transfer
from tests.detection.conftest import write_sparse_yolov5n

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_detection_sparse_transfer_from_the_zoo(tmp_path, yolo_tree, make_sparse_checkpoint):
    write_sparse_yolov5n(tmp_path / "yolov5n_pruned50.pt")
    make_sparse_checkpoint(tmp_path / "resnet_small_pruned.pt", sparsity=0.8)       # a classifier: not a candidate
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": [
        {"name": "yolov5n_pruned50", "path": "yolov5n_pruned50.pt", "arch": "yolov5n", "sparsity": 0.5},
        {"name": "small_pruned80", "path": "resnet_small_pruned.pt", "arch": "resnet_small", "sparsity": 0.8}]}))
    summary = sparse_transfer.main([
        "--use-case", "detection", "--data", str(yolo_tree), "--zoo", str(zoo), "--optim-level", "0.5",
        "--recipe_args", '{"num_epochs": 2, "warmup_epochs": 1, "quantization_start_epoch": 1}',
        "--image_size", "64", "--batch_size", "4", "--workers", "0", "--no_progress", "--latency_runs", "3",
        "--out", str(tmp_path / "run")])
    assert summary["model"]["name"] == "yolov5n_pruned50" and summary["use_case"] == "cv-detection"
    assert summary["int8"] and 0.0 <= summary["map"] <= 1.0 and "accuracy" not in summary
    assert summary["sparsity"] == pytest.approx(0.5, abs=0.01) == summary["upstream_sparsity"]
    assert summary["recipe"].endswith("yolov5_sparse_transfer.yaml")
    assert summary["latency"]["model_ms"] > 0 and summary["onnx_checks"]["int8"]["num_samples"] > 0
    text = (tmp_path / "run" / "summary.md").read_text()
    assert "mAP@0.5:0.95 / mAP@0.5 (val split)" in text
    checks = summary["onnx_checks"]["fp32"]                  # a detector's agreement is over boxes, named so
    assert "box_agreement" in checks and "top1_agreement" not in checks and "box agreement" in text
