"""Full fine-tuning of a (sparse) upstream checkpoint on a downstream dataset, keeping its sparsity.

Example:
    python main.py --dset cifar10 --dset_path /data/cifar10 \
        --config_path configs/trainers/study_full_lr001.yaml \
        --from_checkpoint_path ckpts/acdc_resnet50_90.pth --manual_seed 21
"""
from __future__ import annotations

import argparse
import json

from utils.cli import options_from_args, setup_logging
from utils.errors import exit_on_user_error


class ListArchs(argparse.Action):
    """--list-archs: every architecture --arch (and a checkpoint's config) may name, then exit."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from models import MODELS  # here, not at the top: --help stays fast
        from models.external import PREFIXES, list_external
        from utils.errors import UserError

        print("\n".join(MODELS.names()))
        for prefix, library in PREFIXES.items():
            try:
                print("\n".join(list_external(prefix)))
            except UserError:
                print(f"({prefix}:NAME needs the {library} package: pip install {library})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("the study's flags")
    g.add_argument("--dset", dest="dataset", required=True,
                   help="dataset name (see configs/datasets/) or 'imagefolder'")
    g.add_argument("--dset_path", dest="dataset_path", help="dataset root on disk (layout auto-detected)")
    g.add_argument("--dset_name", dest="dataset_name",
                   help="the dataset's name in run names and results.csv (default: an ImageFolder tree's or YOLO "
                        "data's folder name, else --dset)")
    g.add_argument("--config_path", dest="trainer_config_path", required=True,
                   help="trainer config: configs/trainers/*.yaml")
    g.add_argument("--transfer_config_path", help="transfer config: configs/transfer/*.yaml")
    g.add_argument("--from_checkpoint_path", help="upstream checkpoint to fine-tune")
    g.add_argument("--epochs", type=int, help="override the trainer config's epochs")
    g.add_argument("--batch_size", type=int, help="override the trainer config's batch size")
    g.add_argument("--workers", type=int, default=4,
                   help="data loader worker processes (at most the cores this process may use; results do not "
                        "depend on the count)")
    g.add_argument("--manual_seed", dest="seed", type=int, default=0, help="seed for everything random")
    g.add_argument("--experiment_root_path", default="experiments", help="where run directories go")
    g.add_argument("--exp_name", help="run directory name (default: DSET_CHECKPOINT_seedSEED)")
    g.add_argument("--interpolation", choices=["bilinear", "bicubic"], help="override the flavour's resize")
    g.add_argument("--use_wandb", action="store_true", help="log to Weights & Biases (offline without a key)")
    g.add_argument("--wandb_project", default="sparse-transfer")
    g.add_argument("--wandb_group")
    g.add_argument("--wandb_name")
    g.add_argument("--gpus", nargs="+", help="GPU ids, e.g. '0' or '0,1' (several: DataParallel)")
    g.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is present")
    g.add_argument("--eval_only", action="store_true", help="only evaluate a fine-tuned checkpoint")
    g.add_argument("--fp16", action="store_true", help="mixed precision on CUDA (= --precision fp16)")
    o = p.add_argument_group("additions")
    o.add_argument("--checkpoint_flavour", help="flavour name or YAML path (auto-detected when omitted)")
    o.add_argument("--resume", action="store_true", help="continue the run in the run directory")
    o.add_argument("--arch", help="train this architecture from scratch instead of loading a checkpoint (or name the "
                                  "architecture of a bare state dict): one of the project's (resnet50, mobilenet, "
                                  "yolov5s...), 'timm:NAME' (any timm model, e.g. timm:deit_small_patch16_224) or "
                                  "'tv:NAME' (torchvision, e.g. tv:convnext_tiny)")
    o.add_argument("--list-archs", action=ListArchs, help="list every architecture name --arch takes, and exit")
    o.add_argument("--lr", type=float, help="override the trainer config's learning rate")
    o.add_argument("--accumulate_steps", type=int,
                   help="gradient accumulation: one optimizer step per N batches (their mean gradient; the batch "
                        "the optimizer sees is N x --batch_size). Default: the trainer config's")
    o.add_argument("--image_size", type=int,
                   help="input size (default: the size the checkpoint was trained at, else the model's)")
    o.add_argument("--max_train_samples", type=int, help="use a seeded subset of the train split")
    o.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"], default="fp32",
                   help="autocast precision of forward/backward (bf16: CPUs with AVX-512 BF16/AMX and recent GPUs; "
                        "fp16: CUDA, with gradient scaling; auto: bf16 where a quick probe finds it faster, else "
                        "fp32); weights stay fp32, masks exact")
    o.add_argument("--channels_last", action="store_true", help="NHWC memory order (faster convolutions on CPU)")
    o.add_argument("--compile", action="store_true", help="torch.compile the model (its first steps compile for "
                                                         "tens of seconds; pays off on long runs)")
    o.add_argument("--noautoanchor", action="store_true",
                   help="detection: keep the anchors as loaded (YOLOv5's flag; by default AutoAnchor checks them "
                        "against the training labels and evolves new ones when they fit poorly)")
    o.add_argument("--model_label", help="the 'model' (method) column of results.csv, e.g. 'AC/DC'")
    o.add_argument("--sparsity_label", type=float, help="the 'sparsity' column (default: measured)")
    o.add_argument("--no_progress", action="store_true", help="no progress bars")
    o.add_argument("--recipe", help="SparseML-style recipe (configs/recipes/): sets epochs, LR, weight decay, "
                                    "pruning and quantization; the trainer config then only names the optimizer. "
                                    "'checkpoint': the recipe the upstream file carries (SparseML files)")
    o.add_argument("--recipe_args", help="override recipe variables: JSON '{\"num_epochs\": 150}' or 'k=v,k2=v2'")
    o.add_argument("--distill_teacher", help="teacher checkpoint for a recipe's DistillationModifier: a model with "
                                            "this dataset's classes (e.g. a dense one fine-tuned on it)")
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from utils.runs import RUNS  # here, not at the top: --help stays fast

    kind = RUNS.get("full")
    result = kind.run(options_from_args(args, kind.options))
    print(json.dumps(result.summary()))
    return result.record


if __name__ == "__main__":
    main()
