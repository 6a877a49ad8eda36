"""One place decides the task (issue 28): `utils.tasks.task_of` for an architecture, a dataset argument, a built
model or a result record; the run, deploy, sparsify and studies stages ask it instead of comparing strings."""
import re

import pytest

from models import build_model
from utils.paths import REPO_ROOT
from utils.tasks import CLASSIFICATION, DETECTION, TASKS, task, task_of


def test_task_of_each_kind_of_thing():
    assert task_of(arch="yolov5n") == DETECTION and task_of(arch="resnet_small") == CLASSIFICATION
    assert task_of(dataset="yolo") == DETECTION and task_of(dataset="/data/parts/data.yaml") == DETECTION
    assert task_of(dataset="cifar10") == CLASSIFICATION
    assert task_of(model=build_model("yolov5n", num_classes=2)) == DETECTION
    assert task_of(model=build_model("resnet_small", num_classes=2)) == CLASSIFICATION
    assert task_of(record={"task": "detection"}) == DETECTION and task_of(record={"val_acc": 0.9}) == CLASSIFICATION
    assert task(arch="yolov5n") is TASKS.get(DETECTION) and task(dataset="cifar10") is TASKS.get(CLASSIFICATION)
    assert TASKS.get(DETECTION).score == "map" and TASKS.get(CLASSIFICATION).score == "val_acc"


def test_task_of_takes_exactly_one_thing():
    with pytest.raises(TypeError, match="exactly one"):
        task_of(arch="yolov5n", dataset="yolo")
    with pytest.raises(TypeError, match="exactly one"):
        task_of()


def test_the_stages_ask_task_of_instead_of_comparing_strings():
    """Left outside utils/tasks: the analysis (pandas only, no torch: it reads the results' task column). A task's
    own specifics are its methods (a detector's parameter groups: DetectionTask.param_groups), not string checks.
    The definitions themselves are not decisions."""
    pattern = re.compile(r'== "detection"|!= "detection"|is_detection_dataset\(|model_task\(|startswith\("yolo|'
                         r'\.layout == |get\("task"\)|[=!]= "yolo"|is_detection\(|\.task == ')
    allowed = {"utils/analysis/plots.py", "utils/analysis/results.py",
               "utils/data/yolo.py", "models/base.py"}        # the last two: the definitions
    found = sorted({str(p.relative_to(REPO_ROOT)) for top in ("models", "policies", "utils")
                    for p in (REPO_ROOT / top).rglob("*.py")
                    if "utils/tasks" not in str(p) and pattern.search(p.read_text(encoding="utf-8"))})
    assert set(found) <= allowed, sorted(set(found) - allowed)
