"""python -m utils.sparseml image_classification.train ARGS   (sparseml.image_classification.train ARGS)
python -m utils.sparseml pytorch_vision train ARGS           (python scripts/pytorch_vision.py train ARGS)
python -m utils.sparseml yolov5 train ARGS                   (sparseml.yolov5.train ARGS, YOLOv5's train.py flags)
python -m utils.sparseml yolov5 export ARGS                  (sparseml.yolov5.export_onnx / export.py --weights ...)
python -m utils.sparseml image_classification.export_onnx ARGS   (and pytorch_vision export ARGS)

SparseML's training command lines, run as this project's full fine-tuning (main.py); the equivalent main.py
command is logged first. `make` (pip install -e .) puts SparseML's command names on the virtual environment's PATH
as console scripts: `sparseml.image_classification.train`, `sparseml.image_classification.export_onnx`,
`sparseml.pytorch_vision`, `sparseml.yolov5.train` and `sparseml.yolov5.export_onnx`.
"""
from __future__ import annotations

import json
import logging
import sys

from utils.cli import setup_logging
from utils.deploy import deploy_checkpoint, describe_deployment
from utils.errors import UserError, exit_on_user_error
from utils.runs import RUNS
from utils.sparseml import COMMANDS, EXPORTS, main_py_command

log = logging.getLogger("utils.sparseml")


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((words for words in (*COMMANDS, *EXPORTS) if tuple(argv[:len(words)]) == words), None)
    if command is None:
        if not argv or argv[0] in ("-h", "--help"):
            print(__doc__)
            return {}
        raise UserError(f"unknown command {' '.join(argv[:2])!r}; use one of: "
                        + ", ".join(" ".join(words) for words in (*COMMANDS, *EXPORTS)))
    rest = argv[len(command):]
    setup_logging("-v" in rest or "--verbose" in rest)
    if command in EXPORTS:
        prog, translate_export = EXPORTS[command]
        how = translate_export(rest, prog=prog)
        report = deploy_checkpoint(how["checkpoint"], how["out"], image_size=how["image_size"],
                                   **({"num_samples": how["num_samples"]} if how["num_samples"] else {}))
        print("\n".join(describe_deployment(report)))
        return report
    prog, translate = COMMANDS[command]
    opts = translate(rest, prog=prog)
    log.info("the same run with main.py: %s", main_py_command(opts))
    result = RUNS.get("full").run(opts)
    print(json.dumps(result.summary()))
    return result.record


# the console scripts (pyproject.toml): each is `python -m utils.sparseml <its words> ARGS`; None, so the
# wrapper's sys.exit() exits 0 (a user's mistake exits 2 with its line, from main)
def image_classification_train() -> None:
    main(["image_classification.train", *sys.argv[1:]])


def image_classification_export_onnx() -> None:
    main(["image_classification.export_onnx", *sys.argv[1:]])


def pytorch_vision() -> None:
    if sys.argv[1:] in ([], ["-h"], ["--help"]):
        print("usage: sparseml.pytorch_vision {train,export} ARGS   (SparseML's scripts/pytorch_vision.py; "
              "`sparseml.pytorch_vision train --help` lists the flags)")
        return
    main(["pytorch_vision", *sys.argv[1:]])


def yolov5_train() -> None:
    main(["yolov5", "train", *sys.argv[1:]])


def yolov5_export_onnx() -> None:
    main(["yolov5", "export_onnx", *sys.argv[1:]])


if __name__ == "__main__":
    main()
