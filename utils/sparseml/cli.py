"""SparseML's training command lines, mapped flag by flag onto this project's full fine-tuning run.

    sparseml.image_classification.train   ==  python -m utils.sparseml image_classification.train
    python scripts/pytorch_vision.py train ==  python -m utils.sparseml pytorch_vision train

Every flag of those commands is either mapped (see FLAG_MAP), accepted with a note (it only concerns logging or
files SparseML wrote), or refused with one line when this project cannot honour it. `zoo:` stubs resolve through
the local zoo (configs/zoo.yaml, or $SPARSE_TRANSFER_ZOO); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from utils.deploy.onnx import OPSET as ONNX_OPSET
from utils.errors import UserError
from utils.io import atomic_write_text
from utils.paths import REPO_ROOT
from utils.runs import FullOptions
from utils.sparsify.zoo import STUB_PREFIX, default_zoo_path, find_stub, load_zoo, resolve_recipe

log = logging.getLogger(__name__)

# SparseML dataset names -> ours; ImageNet, Imagenette and Imagewoof are ImageFolder trees (train/ + val/).
DATASETS = {"imagefolder": "imagefolder", "imagenet": "imagefolder", "imagenette": "imagefolder",
            "imagewoof": "imagefolder", "cifar10": "cifar10", "cifar100": "cifar100"}
# SparseML optimizer names (torch.optim classes) -> ours, and the --optim-args each accepts.
OPTIMIZERS = {"SGD": ("sgd", {"momentum", "nesterov", "weight_decay", "dampening"}),
              "Adam": ("adam", {"betas", "weight_decay", "amsgrad"}),
              "AdamW": ("adamw", {"betas", "weight_decay", "amsgrad"})}
SGD_DEFAULT_ARGS = {"momentum": 0.9, "nesterov": True, "weight_decay": 0.0001}     # SparseML's default for SGD
NOTED = {"logs_dir": "metrics go to the run directory's metrics.jsonl (and wandb with main.py --use_wandb)",
         "save_best_after": "this project keeps the last epoch's model: no model selection on the test set",
         "save_epochs": "the run directory keeps one resumable checkpoint.pt, rewritten every epoch",
         "loader_pin_memory": "memory is pinned whenever training runs on CUDA"}
REFUSED_UNLESS = {"ffcv": False, "max_train_steps": -1, "max_eval_steps": -1,
                  "one_shot": False, "debug_steps": -1, "dataset_kwargs": {}}
REFUSED_WHY = {"ffcv": "FFCV loaders are not supported",
               "max_train_steps": "partial epochs are not supported (recipes count whole epochs)",
               "max_eval_steps": "partial evaluation is not supported (the whole test split is scored)",
               "one_shot": "one-shot recipes run with `python -m utils.checkpoints.prune` here",
               "debug_steps": "debug steps are not supported; use main.py --max_train_samples",
               "dataset_kwargs": "dataset keyword arguments are not supported; use --image-size"}


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """`--a-b` and `--a_b`, as SparseML accepts both."""
    parser.add_argument(f"--{name.replace('_', '-')}", f"--{name}", dest=name, **kwargs)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {text!r}") from None


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The flags of sparseml.image_classification.train and scripts/pytorch_vision.py train."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _flag(p, "train_batch_size", type=int, required=True)
    _flag(p, "test_batch_size", type=int, required=True)
    _flag(p, "dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    _flag(p, "dataset_path", required=True)
    _flag(p, "arch_key", help="resnet18/34/50/101/152 or mobilenet (SparseML's spellings accepted)")
    _flag(p, "checkpoint_path", help="a file, zoo:STUB, or 'zoo' (the recipe stub's model)")
    _flag(p, "init_lr", type=float, default=1e-9)
    _flag(p, "recipe_path", help="a recipe file or zoo:STUB?recipe_type=TYPE")
    _flag(p, "recipe_args", help="JSON object of recipe variables to override")
    p.add_argument("--eval-mode", "--eval_mode", dest="eval_mode", action=argparse.BooleanOptionalAction,
                   default=False)
    _flag(p, "optim", default="SGD", help=f"one of {', '.join(OPTIMIZERS)}")
    _flag(p, "optim_args", type=_json, default=None)
    _flag(p, "pretrained", default="True", help="True: the local zoo's dense model of --arch-key; False: none")
    _flag(p, "pretrained_dataset", default=None)
    _flag(p, "model_kwargs", type=_json, default={})
    _flag(p, "dataset_kwargs", type=_json, default={})
    _flag(p, "model_tag", default=None)
    _flag(p, "save_dir", default="pytorch_vision")
    _flag(p, "device", default=None, help="cpu, cuda or cuda:0,1 (default: CUDA when present)")
    _flag(p, "loader_num_workers", type=int, default=4)
    p.add_argument("--loader-pin-memory", "--loader_pin_memory", dest="loader_pin_memory",
                   action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--loader-no-pin-memory", "--loader_no_pin_memory", dest="loader_pin_memory",
                   action="store_false")
    _flag(p, "image_size", type=int, default=None,
          help="input side (default: the size the checkpoint was trained at, as every command here; SparseML: 224)")
    _flag(p, "use_mixed_precision", action="store_true")
    _flag(p, "logs_dir", default=None)
    _flag(p, "save_best_after", type=int, default=None)
    _flag(p, "save_epochs", type=int, nargs="*", default=None)
    _flag(p, "local_rank", type=int, default=None, help="set by torch.distributed launchers; torchrun works too")
    _flag(p, "gradient_accum_steps", type=int, default=1,
          help="batches per optimizer step (main.py --accumulate_steps)")
    _flag(p, "ffcv", action="store_true")
    _flag(p, "max_train_steps", type=int, default=-1)
    _flag(p, "max_eval_steps", type=int, default=-1)
    p.add_argument("--one-shot", "--one_shot", dest="one_shot", action=argparse.BooleanOptionalAction, default=False)
    _flag(p, "debug_steps", type=int, default=-1)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def our_arch(arch_key: str) -> str:
    """SparseML's architecture keys (resnet_50, resnetv1-50, mobilenet_v1, ...) -> ours."""
    key = arch_key.lower()
    m = re.fullmatch(r"resnet(?:v1)?[-_]?(18|34|50|101|152)", key)
    if m:
        return f"resnet{m.group(1)}"
    if re.fullmatch(r"mobilenet(?:[-_]?v1)?(?:[-_]1\.0)?", key):
        return "mobilenet"
    raise UserError(f"--arch-key {arch_key!r}: not an architecture this project has; use resnet18, resnet34, "
                    "resnet50, resnet101, resnet152 or mobilenet")


def check_unsupported(args: argparse.Namespace) -> None:
    """Refuse what cannot be honoured; note what is accepted but changes nothing here."""
    for name, default in REFUSED_UNLESS.items():
        if getattr(args, name) != default:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: {REFUSED_WHY[name]}")
    if args.gradient_accum_steps < 1:
        raise UserError(f"--gradient-accum-steps {args.gradient_accum_steps}: give 1 (no accumulation) or more batches "
                        "per optimizer step")
    if args.pretrained_dataset not in (None, "imagenet"):
        raise UserError(f"--pretrained-dataset {args.pretrained_dataset!r}: only ImageNet upstreams are in the "
                        "local zoo; give the file with --checkpoint-path")
    for name, why in NOTED.items():
        value = getattr(args, name)
        if value is not None and not (name == "loader_pin_memory" and value is True):
            log.info("--%s: accepted; %s", name.replace("_", "-"), why)
    unknown = set(args.model_kwargs) - {"ignore_error_tensors"}
    if unknown:
        raise UserError(f"--model-kwargs: {sorted(unknown)} not supported; only 'ignore_error_tensors' (the "
                        "classifier's tensors, which this project always re-initialises for a new dataset)")
    ignored = args.model_kwargs.get("ignore_error_tensors") or []
    bad = [t for t in ignored if not re.fullmatch(r"classifier\.fc(\.1)?\.(weight|bias)|fc\.(weight|bias)", t)]
    if bad:
        raise UserError(f"--model-kwargs ignore_error_tensors {bad}: only the classifier (classifier.fc.weight, "
                        "classifier.fc.bias) may be left unloaded; every other tensor loads strictly")


def trainer_yaml(args: argparse.Namespace) -> str:
    """The trainer config the flags describe: the optimizer and batch sizes (the recipe sets epochs and LR)."""
    if args.optim not in OPTIMIZERS:
        raise UserError(f"--optim {args.optim!r}: supported here: {', '.join(OPTIMIZERS)}")
    name, allowed = OPTIMIZERS[args.optim]
    given = dict(SGD_DEFAULT_ARGS if args.optim_args is None and name == "sgd" else args.optim_args or {})
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise UserError(f"--optim-args {unknown}: not supported for {args.optim}; "
                        f"supported: {', '.join(sorted(allowed))}")
    if given.pop("dampening", 0) or given.pop("amsgrad", False):
        raise UserError("--optim-args: dampening and amsgrad are not supported; remove them")
    optimizer: dict[str, Any] = {"name": name, "lr": args.init_lr}
    if name == "sgd":
        optimizer.update(momentum=given.get("momentum", 0.0), nesterov=given.get("nesterov", False))
    else:
        optimizer["betas"] = list(given.get("betas", (0.9, 0.999)))
    optimizer["weight_decay"] = given.get("weight_decay", 0.01 if name == "adamw" else 0.0)
    return (f"# written by `{args.prog}` from --optim {args.optim} --optim-args {json.dumps(args.optim_args)}\n"
            f"epochs: 1        # the recipe sets the length\nbatch_size: {args.train_batch_size}\n"
            f"test_batch_size: {args.test_batch_size}\noptimizer: {json.dumps(optimizer)}\n")


def upstream(args: argparse.Namespace, recipe_text: str | None) -> tuple[str | None, str | None]:
    """(checkpoint path, arch to train from scratch): --checkpoint-path over --pretrained, as SparseML loads."""
    ckpt = args.checkpoint_path
    if ckpt == "zoo":
        if not (recipe_text or "").startswith(STUB_PREFIX):
            raise UserError("--checkpoint-path zoo: takes the model of the --recipe-path zoo stub; give "
                            "--recipe-path zoo:STUB or a checkpoint file")
        return find_stub(recipe_text).path, None
    if ckpt and ckpt.startswith(STUB_PREFIX):
        return find_stub(ckpt).path, None
    if ckpt:
        if not Path(ckpt).is_file():
            raise UserError(f"--checkpoint-path {ckpt}: file not found")
        return ckpt, None
    if args.arch_key is None:
        raise UserError("give --arch-key (with --pretrained) or --checkpoint-path")
    arch = our_arch(args.arch_key)
    if str(args.pretrained).lower() in ("false", "0", "none", ""):
        return None, arch
    if str(args.pretrained).lower() not in ("true", "1"):
        raise UserError(f"--pretrained {args.pretrained!r}: SparseZoo's named weights are not available offline; "
                        "register the file under its stub and pass --checkpoint-path zoo:STUB")
    return dense_upstream(arch), None


def dense_upstream(arch: str) -> str:
    """--pretrained True: the local zoo's dense model of `arch` (SparseML would download ImageNet weights)."""
    zoo = default_zoo_path()
    entries = load_zoo(zoo) if zoo.is_file() else []
    dense = [e for e in entries if e.arch == arch and e.sparsity == 0]
    if not dense:
        raise UserError(f"--pretrained True: no dense {arch} in the local zoo {zoo} (nothing is downloaded here); "
                        f"register one under 'models:' as - {{name: {arch}_dense, path: FILE, arch: {arch}, "
                        "sparsity: 0}, or pass --pretrained False to train from scratch")
    return dense[0].path


def device_options(device: str | None) -> dict[str, Any]:
    if device is None:
        return {}
    if device == "cpu":
        return {"cpu": True}
    m = re.fullmatch(r"cuda(?::([\d,]+))?", device)
    if m is None:
        raise UserError(f"--device {device!r}: expected cpu, cuda or cuda:0,1")
    return {"gpus": [int(g) for g in m.group(1).split(",")]} if m.group(1) else {}


# the run options a value out of range is named by: the flag the user typed
CLASSIFICATION_FLAGS = {"batch_size": "--train-batch-size", "image_size": "--image-size",
                        "workers": "--loader-num-workers", "accumulate_steps": "--gradient-accum-steps"}


def run_options(flags: dict[str, str], **values: Any) -> FullOptions:
    """FullOptions of a translated command line; a bad value is one line naming the flag it came from."""
    try:
        return FullOptions.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        what = f"{flags.get(key, '--' + key)} {values.get(key)}: " if key else ""
        raise UserError(f"{what}{first['msg'].removeprefix('Value error, ')}") from None


def translate(argv: list[str], *, prog: str) -> FullOptions:
    """The run options a SparseML training command line means (the trainer config written beside the run)."""
    args = build_parser(prog).parse_args(argv)
    args.prog = prog
    check_unsupported(args)
    if args.dataset not in DATASETS:
        raise UserError(f"--dataset {args.dataset!r}: supported here: {', '.join(DATASETS)} (any other dataset "
                        "as an ImageFolder tree: --dataset imagefolder)")
    recipe = resolve_recipe(args.recipe_path) if args.recipe_path else None
    if recipe is None and not args.eval_mode:
        raise UserError("--recipe-path is required to train (the recipe sets epochs, LR, pruning and quantization); "
                        "configs/recipes/ has examples")
    checkpoint, arch = upstream(args, args.recipe_path)
    workers = min(args.loader_num_workers, os.cpu_count() or 1)
    if workers < args.loader_num_workers:
        log.info("--loader-num-workers %d: this machine has %d CPUs; using %d loader processes",
                 args.loader_num_workers, workers, workers)
    tag = args.model_tag or f"{(args.arch_key or Path(checkpoint or 'model').stem).replace('/', '_')}_{args.dataset}"
    trainer = Path(args.save_dir) / f"{tag}.trainer.yaml"
    atomic_write_text(trainer, trainer_yaml(args))
    return run_options(CLASSIFICATION_FLAGS, dataset=DATASETS[args.dataset], dataset_path=args.dataset_path,
                       trainer_config_path=str(trainer),
                       from_checkpoint_path=checkpoint, arch=arch, batch_size=args.train_batch_size,
                       accumulate_steps=args.gradient_accum_steps if args.gradient_accum_steps != 1 else None,
                       workers=workers, image_size=args.image_size,
                       experiment_root_path=args.save_dir, exp_name=tag, recipe=recipe, recipe_args=args.recipe_args,
                       eval_only=args.eval_mode, fp16=args.use_mixed_precision, resume=True,
                       **device_options(args.device))


MAIN_FLAGS = {"dataset": "--dset", "dataset_path": "--dset_path", "trainer_config_path": "--config_path",
              "from_checkpoint_path": "--from_checkpoint_path", "arch": "--arch", "batch_size": "--batch_size",
              "accumulate_steps": "--accumulate_steps",
              "workers": "--workers", "image_size": "--image_size", "experiment_root_path": "--experiment_root_path",
              "exp_name": "--exp_name", "recipe": "--recipe", "recipe_args": "--recipe_args",
              "eval_only": "--eval_only", "fp16": "--fp16", "resume": "--resume", "cpu": "--cpu", "gpus": "--gpus"}


def main_py_command(opts: FullOptions) -> str:
    """The same run as a main.py command line (what to write next time)."""
    parts = ["python", str(Path("main.py") if Path.cwd() == REPO_ROOT else REPO_ROOT / "main.py")]
    for field, flag in MAIN_FLAGS.items():
        value = getattr(opts, field)
        if value is None or value is False:
            continue
        if value is True:
            parts += [flag]
        else:
            parts += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return shlex.join(parts)


# ---------------------------------------------------------------- export_onnx (image_classification, pytorch_vision)

EXPORT_READ_FROM_FILE = ("arch_key", "dataset", "dataset_path", "labels_to_class_mapping", "pretrained",
                         "pretrained_dataset", "model_kwargs", "dataset_kwargs", "recipe", "num_classes")


def build_export_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="SparseML's classification export flags: ONNX (fp32, plus "
                                "INT8 QDQ after quantization-aware training) of a checkpoint, checked against torch.")
    _flag(p, "checkpoint_path", required=True, help="the trained model (a run's model.pt) or any checkpoint file")
    _flag(p, "save_dir", default="pytorch_vision", help="where the export goes: SAVE_DIR/TAG/")
    _flag(p, "model_tag", default=None, help="TAG (default: the checkpoint's run folder, else its file name)")
    _flag(p, "image_size", type=int, default=None, help="input side (default: the size the model trained at)")
    _flag(p, "num_samples", type=int, default=-1, help="sample inputs for the torch comparison (default 64)")
    _flag(p, "onnx_opset", type=int, default=None, help="17, the opset written here")
    p.add_argument("--convert-qat", "--convert_qat", dest="convert_qat", action="store_true", default=True)
    p.add_argument("--no-convert-qat", "--no_convert_qat", dest="convert_qat", action="store_false")
    p.add_argument("--use-zipfile-serialization-if-available", "--use_zipfile_serialization_if_available",
                   "--no-zipfile-serialization", "--no_zipfile_serialization", dest="zipfile", action="store_true")
    for name in EXPORT_READ_FROM_FILE:
        _flag(p, name, default=None)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def export_options(argv: list[str], *, prog: str) -> dict[str, Any]:
    """The `utils.deploy` call SparseML's export flags mean: {'checkpoint', 'out', 'image_size', 'num_samples'}."""
    args = build_export_parser(prog).parse_args(argv)
    if args.onnx_opset not in (None, ONNX_OPSET):
        raise UserError(f"--onnx-opset {args.onnx_opset}: the ONNX files are written in opset {ONNX_OPSET}")
    if not args.convert_qat:
        raise UserError("--no-convert-qat: a quantization-aware-trained model is written as INT8 QDQ ONNX (with its "
                        "fp32 twin); fake-quantized graphs are not written")
    given = [n for n in EXPORT_READ_FROM_FILE if getattr(args, n) is not None]
    if given:
        log.info("%s: accepted; the architecture, classes and input settings come from the checkpoint",
                 ", ".join(f"--{n.replace('_', '-')}" for n in given))
    checkpoint = Path(args.checkpoint_path)
    if not checkpoint.is_file():
        raise UserError(f"--checkpoint-path {checkpoint}: no such file (a run keeps its model at RUN/model.pt)")
    tag = args.model_tag or (checkpoint.parent.name if checkpoint.name == "model.pt" else checkpoint.stem)
    return {"checkpoint": checkpoint, "out": Path(args.save_dir) / tag, "image_size": args.image_size,
            "num_samples": args.num_samples if args.num_samples > 0 else None}
