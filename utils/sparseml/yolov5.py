"""YOLOv5's train.py flags, as SparseML's YOLOv5 integration took them (`sparseml.yolov5.train`, or
`python train.py --weights ... --sparsification-recipe ... --data ...` in its fork), mapped onto a main.py run.

    python -m utils.sparseml yolov5 train --weights yolov5s_pruned.pt --sparsification-recipe RECIPE \
        --data data.yaml --imgsz 640 --batch-size 16 [--epochs N]

`--weights` / `--sparsification-recipe` take files or `zoo:` stubs (the local zoo); `--cfg yolov5s.yaml` without
weights trains from scratch; `--epochs` with a recipe sets the recipe's `num_epochs`. The run lives in
`--project/--name` (default runs/train/exp) and resumes there when run again.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from models import architectures
from policies.recipe.load import load_recipe, parse_recipe_args
from utils.deploy.onnx import OPSET
from utils.errors import UserError
from utils.paths import TRAINER_DIR
from utils.runs import FullOptions
from utils.sparseml.cli import device_options, run_options
from utils.sparsify.zoo import STUB_PREFIX, find_stub, resolve_recipe

log = logging.getLogger(__name__)

TRAINER = TRAINER_DIR / "yolov5_finetune.yaml"
TRAINER_COS = TRAINER_DIR / "yolov5_finetune_cos.yaml"     # --cos-lr
# flags this project cannot honour, with the reason (their defaults pass)
REFUSED = {"rect": "rectangular batches are not supported (images are letterboxed to squares)",
           "evolve": "hyperparameter evolution is not supported",
           "multi_scale": "multi-scale training is not supported",
           "image_weights": "weighted image selection is not supported", "quad": "the quad loader is not supported",
           "single_cls": "single-class training is not supported; edit the data.yaml instead",
           "sync_bn": "SyncBatchNorm is not supported", "hyp": "hyperparameters come from the trainer config "
           f"({TRAINER.relative_to(TRAINER_DIR.parent.parent)}) and the recipe; --hyp files are not read",
           "label_smoothing": "label smoothing is not supported for detection", "freeze": "freezing layers by index "
           "is not supported for detection"}
NOTED = ("nosave", "noval", "noplots", "exist_ok", "cache", "patience", "save_period")


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="", help="initial weights: a file or zoo:STUB ('' with --cfg: from scratch)")
    p.add_argument("--cfg", default="", help="model yaml (yolov5n/s/m/l/x.yaml) when training from scratch")
    p.add_argument("--data", required=True, help="the dataset's data.yaml")
    p.add_argument("--sparsification-recipe", "--sparsification_recipe", "--recipe", dest="recipe", default=None)
    p.add_argument("--recipe-args", "--recipe_args", dest="recipe_args", default=None)
    p.add_argument("--epochs", type=int, default=None, help="with a recipe: its num_epochs")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)
    p.add_argument("--imgsz", "--img", "--img-size", dest="imgsz", type=int, default=None,
                   help="input side (default: the size the checkpoint was trained at, as every command here; "
                        "YOLOv5: 640)")
    p.add_argument("--device", default="")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--project", default="runs/train")
    p.add_argument("--name", default="exp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizer", choices=["SGD", "Adam", "AdamW"], default="SGD")
    p.add_argument("--resume", nargs="?", const=True, default=False)
    store_true = ("rect", "multi_scale", "image_weights", "quad", "single_cls", "sync_bn", "noautoanchor", "cos_lr",
                  *NOTED[:4])
    for flag in store_true:
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, action="store_true")
    p.add_argument("--evolve", type=int, nargs="?", const=300, default=None)
    p.add_argument("--hyp", default=None)
    p.add_argument("--label-smoothing", dest="label_smoothing", type=float, default=0.0)
    p.add_argument("--freeze", nargs="+", type=int, default=[0])
    p.add_argument("--cache", nargs="?", const="ram", default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--save-period", dest="save_period", type=int, default=None)
    p.add_argument("--local_rank", type=int, default=-1)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def check_flags(args: argparse.Namespace) -> None:
    defaults = {"rect": False, "evolve": None, "multi_scale": False, "image_weights": False, "quad": False,
                "single_cls": False, "sync_bn": False, "hyp": None, "label_smoothing": 0.0, "freeze": [0]}
    for name, default in defaults.items():
        if getattr(args, name) != default:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: {REFUSED[name]}")
    if args.optimizer != "SGD":
        raise UserError(f"--optimizer {args.optimizer}: detection uses YOLOv5's SGD here "
                        f"({TRAINER.name}); edit a copy of that trainer config for another optimizer")
    for name in NOTED:
        if getattr(args, name) not in (None, False):
            log.info("--%s: accepted; it changes nothing here", name.replace("_", "-"))


def upstream(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(checkpoint, arch from scratch)."""
    if args.weights:
        if args.weights.startswith(STUB_PREFIX):
            return find_stub(args.weights).path, None
        if not Path(args.weights).is_file():
            raise UserError(f"--weights {args.weights}: file not found (nothing is downloaded here)")
        return args.weights, None
    arch = Path(args.cfg).stem if args.cfg else ""
    if arch not in architectures("detection"):
        raise UserError(f"--cfg {args.cfg!r}: give --weights FILE, or --cfg one of "
                        f"{', '.join(a + '.yaml' for a in sorted(architectures('detection')))} to train from scratch")
    return None, arch


def recipe_arguments(recipe: str | None, recipe_args: str | None, epochs: int | None) -> str | None:
    """--recipe-args, with --epochs as the recipe's num_epochs."""
    if epochs is None or recipe is None:
        return recipe_args
    if "num_epochs" not in load_recipe(recipe).variables:
        raise UserError(f"--epochs {epochs}: the recipe {recipe} has no num_epochs variable; set its length with "
                        "--recipe-args")
    return json.dumps({**parse_recipe_args(recipe_args), "num_epochs": epochs})


YOLOV5_FLAGS = {"batch_size": "--batch-size", "image_size": "--imgsz", "workers": "--workers", "epochs": "--epochs"}


def translate(argv: list[str], *, prog: str) -> FullOptions:
    args = build_parser(prog).parse_args(argv)
    check_flags(args)
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs {args.epochs}: must be at least 1")
    recipe = resolve_recipe(args.recipe) if args.recipe else None
    checkpoint, arch = upstream(args)
    workers = min(args.workers, os.cpu_count() or 1)
    trainer = TRAINER_COS if args.cos_lr else TRAINER
    return run_options(YOLOV5_FLAGS, dataset="yolo", dataset_path=args.data, trainer_config_path=str(trainer),
                       from_checkpoint_path=checkpoint, arch=arch, batch_size=args.batch_size, workers=workers,
                       image_size=args.imgsz, experiment_root_path=args.project, exp_name=args.name, seed=args.seed,
                       recipe=recipe, recipe_args=recipe_arguments(recipe, args.recipe_args, args.epochs),
                       epochs=None if recipe else args.epochs, resume=True, noautoanchor=args.noautoanchor,
                       **device_options({"": None, "cpu": "cpu"}.get(args.device, f"cuda:{args.device}")))


# ---------------------------------------------------------------- export.py (sparseml.yolov5.export_onnx)

EXPORT_NOTED = {"dynamic": "the ONNX files always have a dynamic batch axis",
                "batch_size": "the ONNX files have a dynamic batch axis",
                "device": "the export runs on CPU", "simplify": "the graph is exported as torch traces it"}
EXPORT_REFUSED = {"half": "fp16 ONNX is not written (fp32, and INT8 after quantization-aware training)",
                  "int8": "TensorFlow INT8 is not written; a QAT run's INT8 comes as ONNX",
                  "keras": "Keras is not written", "optimize": "TorchScript mobile optimisation is not written",
                  "inplace": "in-place Detect is not exported", "nms": "NMS is not in the graph (run YOLOv5's NMS "
                  "on the decoded outputs)", "agnostic_nms": "NMS is not in the graph"}


def build_export_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="YOLOv5's export.py flags: ONNX (fp32, plus INT8 QDQ after "
                                "quantization-aware training) of a trained run, checked against torch.")
    p.add_argument("--weights", required=True, help="the trained model: RUN/weights/last.pt (YOLOv5's place, read "
                                                    "as RUN/model.pt) or any checkpoint file")
    p.add_argument("--imgsz", "--img", "--img-size", dest="imgsz", type=int, nargs="+", default=None,
                   help="input size (one value, or two equal ones; default: the size the run trained at)")
    p.add_argument("--include", nargs="+", default=["onnx"], help="formats: onnx only")
    p.add_argument("--data", default=None, help="accepted (the class names come from the checkpoint)")
    p.add_argument("--opset", type=int, default=None, help=f"ONNX opset: {OPSET}, the one written here")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=1)
    p.add_argument("--device", default="")
    for flag in ("dynamic", "simplify", *EXPORT_REFUSED):
        p.add_argument(f"--{flag.replace('_', '-')}", f"--{flag}", dest=flag, action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def export_weights_path(weights: str) -> Path:
    """The checkpoint `--weights` names: YOLOv5's RUN/weights/last.pt (or best.pt) is this project's RUN/model.pt
    (the last epoch's model; there is no 'best', which would be chosen on the test split)."""
    path = Path(weights)
    if path.is_file():
        return path
    run = path.parent.parent
    if path.parent.name == "weights" and path.name in ("last.pt", "best.pt") and (run / "model.pt").is_file():
        if path.name == "best.pt":
            log.info("%s: this project keeps the last epoch's model, not a best one chosen on the validation "
                     "split; exporting %s", path, run / "model.pt")
        return run / "model.pt"
    raise UserError(f"--weights {weights}: no such file (a run of `yolov5 train` keeps its model at RUN/model.pt; "
                    "RUN/weights/last.pt is read as that)")


def export_options(argv: list[str], *, prog: str) -> dict:
    """The `utils.deploy` call YOLOv5's export.py flags mean: {'checkpoint', 'out', 'image_size'}."""
    args = build_export_parser(prog).parse_args(argv)
    for flag, why in EXPORT_REFUSED.items():
        if getattr(args, flag):
            raise UserError(f"--{flag.replace('_', '-')}: {why}")
    formats = [f.lower() for f in args.include]
    if formats != ["onnx"]:
        raise UserError(f"--include {' '.join(args.include)}: only onnx is written here (fp32, and INT8 after "
                        "quantization-aware training)")
    if args.opset not in (None, OPSET):
        raise UserError(f"--opset {args.opset}: the ONNX files are written in opset {OPSET}")
    if args.imgsz is not None and (len(args.imgsz) > 2 or len(set(args.imgsz)) != 1):
        raise UserError(f"--imgsz {' '.join(map(str, args.imgsz))}: give one size (square inputs: the training "
                        "letterboxes to squares)")
    defaults = {"dynamic": False, "batch_size": 1, "device": "", "simplify": False}
    for flag, why in EXPORT_NOTED.items():
        if getattr(args, flag) != defaults[flag]:
            log.info("--%s: accepted; %s", flag.replace("_", "-"), why)
    checkpoint = export_weights_path(args.weights)
    return {"checkpoint": checkpoint, "out": checkpoint.parent / f"{checkpoint.stem}_export",
            "image_size": args.imgsz[0] if args.imgsz else None, "num_samples": None}
