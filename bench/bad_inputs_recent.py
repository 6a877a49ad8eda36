"""The battery's cases from issue 25 (YOLO data, detection transfer, legacy pickles, the SparseML command lines,
utils.deploy, recipes without pruning, moved runs): one or more per item of that issue."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
from bad_inputs_cases import (
    PY,
    ROOT,
    Case,
    _RunsCode,
    checkpoint,
    folders,
    image,
    linear_py,
    main_py,
    ran_once,
    recipe_file,
    results_rows,
    write,
)

LR_ONLY = ("modifiers:\n  - !EpochRangeModifier\n    end_epoch: 1\n  - !SetLearningRateModifier\n"
           "    start_epoch: 0\n    learning_rate: 0.05\n")


# -------------------------------------------------------------------------------- files

def legacy_file(path: Path, payload: object) -> Path:
    """A YOLOv5-style file in torch's legacy (non-zip) format holding `payload` beside its tensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"conv.weight": torch.ones(2, 2)}, "extra": payload}, path,
               _use_new_zipfile_serialization=False)
    return path


def yolo_tree(root: Path, *, labels: bool = True, yaml_text: str | None = None) -> str:
    """4 train and 2 val images of 32 px with one box each (or no labels/ folder at all); returns data.yaml."""
    for split, count in (("train", 4), ("val", 2)):
        for i in range(count):
            image(root / "images" / split / f"{i}.png", size=32, seed=i)
            if labels:
                write(root / "labels" / split / f"{i}.txt", f"{i % 2} 0.5 0.5 0.4 0.4\n")
    default = "path: .\ntrain: images/train\nval: images/val\nnc: 2\nnames: [a, b]\n"
    text = yaml_text if yaml_text is not None else default
    return str(write(root / "data.yaml", text))


def detection_py(d: Path, data_yaml: str, *flags: str) -> list[str]:
    return main_py(d, "--image_size", "32", "--batch_size", "2", *flags, dset=("--dset", "yolo", "--dset_path",
                                                                              data_yaml), src=("--arch", "yolov5n"))


def yolov5_py(d: Path, *flags: str, weights: str | None = None) -> list[str]:
    weights = weights or str(checkpoint(d / "up.pt"))
    return [PY, "-m", "utils.sparseml", "yolov5", "train", "--data", yolo_tree(d / "yolo"), "--weights", weights,
            "--imgsz", "32", "--workers", "0", "--project", str(d / "runs"), *flags]


def finished_run(d: Path) -> Path:
    subprocess.run(main_py(d, "--exp_name", "r"), capture_output=True)
    return d / "exp" / "r"


# -------------------------------------------------------------------------------- recoveries

def kept_mask(d: Path, out: subprocess.CompletedProcess, *, table: Path | None = None) -> str | None:
    """The run finished with the upstream's sparsity (0.5) and said it kept the mask."""
    if out.returncode != 0:
        return f"exit {out.returncode}: {out.stderr.strip().splitlines()[-1:]}"
    with open(table or d / "exp" / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != 1 or abs(float(rows[0]["measured_sparsity"]) - 0.5) > 0.01:
        return f"measured sparsity {[r['measured_sparsity'] for r in rows]}, want 0.5"
    return None if "no pruning modifier" in out.stderr else "no warning that the mask was kept"


def said(fragment: str, rows: int = 1):
    """Recovered when the run left `rows` intact rows and its stderr holds `fragment`."""
    def check(d: Path, out: subprocess.CompletedProcess) -> str | None:
        problem = ran_once(d, out, rows=rows)
        return problem or (None if fragment in out.stderr else f"no line saying {fragment!r}")
    return check


def converted(d: Path, out: subprocess.CompletedProcess) -> str | None:
    if out.returncode != 0:
        return f"exit {out.returncode}: {out.stderr.strip().splitlines()[-1:]}"
    clean = torch.load(d / "clean.pt", weights_only=True)
    return None if torch.equal(clean["model"]["conv.weight"], torch.ones(2, 2)) else "tensors not kept"


def recorded_here(d: Path, out: subprocess.CompletedProcess) -> str | None:
    """The moved run's one row names where it is now."""
    if out.returncode != 0:
        return f"exit {out.returncode}: {out.stderr.strip().splitlines()[-1:]}"
    with open(d / "moved" / "results.csv", encoding="utf-8") as f:
        where = [r["run_dir"] for r in csv.DictReader(f)]
    return None if where == [str(d / "moved" / "r")] else f"run_dir recorded as {where}"


def absolute_row(d: Path, out: subprocess.CompletedProcess) -> str | None:
    problem = ran_once(d, out)
    where = [r["run_dir"] for r in results_rows(d)] if not problem else []
    return problem or (None if where == [str(d / "exp" / "r")] else f"run_dir recorded as {where}")


def set_aside(d: Path, out: subprocess.CompletedProcess) -> str | None:
    problem = ran_once(d, out, rows=2)
    if problem:
        return problem
    if not (d / "exp" / "results.csv.damaged").is_file() or "cut-off row" not in out.stderr:
        return "the cut-off row was not set aside with a warning"
    return None


def _cut_last_row(d: Path) -> None:
    table = d / "exp" / "results.csv"
    text = table.read_text()
    table.write_text(text + text.splitlines()[1][:30] + "\n")


def _labels_out_of_range(d: Path) -> None:
    for labels in (d / "cache").rglob("labels.npy"):
        np.save(labels, np.load(labels) + 100)


def _move(d: Path) -> None:
    shutil.move(d / "exp", d / "moved")


# -------------------------------------------------------------------------------- cases

def recent_cases() -> list[Case]:
    c: list[Case] = []
    add = c.append
    # 1. legacy pickles
    add(Case("checkpoints: legacy-format file that runs code", lambda d: [
        PY, "-m", "utils.checkpoints", str(legacy_file(d / "evil_legacy.pt", _RunsCode()))], "would call"))
    add(Case("checkpoints: legacy-format file naming a class", lambda d: [
        PY, "-m", "utils.checkpoints", str(legacy_file(d / "benign_legacy.pt", Path("/runs/exp")))], "--convert"))
    add(Case("checkpoints: --convert of a file that runs code", lambda d: [
        PY, "-m", "utils.checkpoints", str(legacy_file(d / "evil_legacy.pt", _RunsCode())), "--convert",
        str(d / "clean.pt")], "do not use this file"))
    add(Case("checkpoints: --convert of a file naming a class", lambda d: [
        PY, "-m", "utils.checkpoints", str(legacy_file(d / "benign.pt", Path("/runs/exp"))), "--convert",
        str(d / "clean.pt")], recover=converted))
    # 2. a recipe without a pruning modifier on a sparse upstream
    add(Case("recipe: no pruning modifier on a sparse upstream", lambda d: main_py(
        d, "--recipe", recipe_file(d, LR_ONLY)), recover=kept_mask))
    add(Case("sparseml: recipe without a pruning modifier", lambda d: [
        PY, "-m", "utils.sparseml", "image_classification.train", "--train-batch-size", "4", "--test-batch-size", "4",
        "--dataset", "imagefolder", "--dataset-path", str(folders(d / "data")), "--recipe-path",
        recipe_file(d, LR_ONLY), "--checkpoint-path", str(checkpoint(d / "up.pt")), "--save-dir", str(d / "sv"),
        "--image-size", "16", "--loader-num-workers", "0"],
        recover=lambda d, out: kept_mask(d, out, table=d / "sv" / "results.csv")))
    # 3. YOLO data without any label
    add(Case("yolo: no labels folder", lambda d: detection_py(d, yolo_tree(d / "yolo", labels=False)), "has a box"))
    # 4.-6. tracebacks
    add(Case("main: --image_size 1", lambda d: main_py(d, "--image_size", "1"), "image_size"))
    add(Case("yolov5 train: --epochs 0", lambda d: yolov5_py(d, "--epochs", "0"), "--epochs 0"))
    add(Case("yolov5 train: --imgsz 0", lambda d: yolov5_py(d, "--imgsz", "0"), "--imgsz 0"))
    add(Case("yolov5 train: --batch-size -4", lambda d: yolov5_py(d, "--batch-size", "-4"), "--batch-size -4"))
    add(Case("deploy: --num_samples 0", lambda d: [PY, "-m", "utils.deploy", str(checkpoint(d / "up.pt")),
                                                   "--num_samples", "0"], "num_samples"))
    add(Case("deploy: --out names a file", lambda d: [PY, "-m", "utils.deploy", str(checkpoint(d / "up.pt")), "--out",
                                                      str(write(d / "taken.txt", "x"))], "taken.txt"))
    # 7.-8. misleading
    add(Case("deploy: a run's training state", lambda d: [
        PY, "-m", "utils.deploy", str(finished_run(d) / "checkpoint.pt")], "model.pt"))
    add(Case("recipe: undefined variable, none defined", lambda d: main_py(d, "--recipe", recipe_file(
        d, "modifiers:\n  - !EpochRangeModifier\n    end_epoch: eval(other_var)\n")), "defines no variables"))
    # 9. a feature cache whose labels are no class
    add(Case("linear: labels out of range in the cache", lambda d: linear_py(d, "--seed", "2"),
             recover=said("re-extracting", rows=2),
             before=[lambda d: subprocess.run(linear_py(d, "--seed", "1"), capture_output=True),
                     _labels_out_of_range]))
    # 10. data.yaml
    add(Case("yolo: nc: two", lambda d: detection_py(d, yolo_tree(
        d / "yolo", yaml_text="train: images/train\nval: images/val\nnc: two\nnames: [a, b]\n")), "nc must be an"))
    add(Case("yolo: nc: 0 and names: []", lambda d: detection_py(d, yolo_tree(
        d / "yolo", yaml_text="train: images/train\nval: images/val\nnc: 0\nnames: []\n")), "nc is 0"))
    add(Case("yolo: no names key", lambda d: detection_py(d, yolo_tree(
        d / "yolo", yaml_text="train: images/train\nval: images/val\nnc: 2\n")), recover=lambda d, out: (
        None if out.returncode == 0 and "no 'names' key" in out.stderr else
        f"exit {out.returncode}, warned: {'no ' + repr('names') + ' key' in out.stderr}")))
    # 11. the other task's model
    add(Case("sparse_transfer: detection with a classifier-only zoo", lambda d: [
        PY, str(ROOT / "sparse_transfer.py"), "--use-case", "detection", "--data", yolo_tree(d / "yolo"), "--zoo",
        str(write(d / "zoo.yaml", json.dumps({"models": [{"name": "small", "path": str(checkpoint(d / "up.pt")),
                                                          "arch": "resnet_small", "sparsity": 0.5}]})))],
        "no detection model"))
    add(Case("yolov5 train: --weights a classifier", lambda d: yolov5_py(d, weights=str(checkpoint(d / "cls.pt"))),
             "cls.pt"))
    # 12. a cut-off row
    add(Case("results.csv: a cut-off last row", lambda d: main_py(d, "--exp_name", "second"), recover=set_aside,
             before=[lambda d: subprocess.run(main_py(d, "--exp_name", "first"), capture_output=True), _cut_last_row]))
    # 13. silent
    add(Case("main: --max_train_samples leaves classes out", lambda d: main_py(
        d, "--max_train_samples", "2", dset=("--dset", "imagefolder", "--dset_path", str(folders(d / "data")))),
        recover=said("without a training image")))
    add(Case("main: --accumulate_steps 1000, 4 batches an epoch", lambda d: main_py(d, "--accumulate_steps", "1000"),
             recover=said("but an epoch has")))
    add(Case("deploy: --engine unknown", lambda d: [PY, "-m", "utils.deploy", str(checkpoint(d / "up.pt")),
                                                    "--engine", "tensorrt"], "--engine tensorrt"))
    add(Case("deploy: --image_size 0", lambda d: [PY, "-m", "utils.deploy", str(checkpoint(d / "up.pt")),
                                                  "--image_size", "0"], "image_size"))
    # 14. where a run is
    add(Case("run: --resume after the root was moved", lambda d: [
        str(d / "moved") if a == str(d / "exp") else a for a in main_py(d, "--exp_name", "r", "--resume")],
        recover=recorded_here, before=[finished_run, _move]))
    add(Case("run: a relative root records an absolute run_dir", lambda d: [
        "exp" if a == str(d / "exp") else a for a in main_py(d, "--exp_name", "r")], recover=absolute_row))
    return c
