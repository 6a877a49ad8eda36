"""Linear fine-tuning of a frozen (sparse) checkpoint on cached, pre-extracted features.

Features are extracted once per (checkpoint, dataset split, transform) into --features_cache and
reused by every later seed or solver. Solvers: lbfgs (default; L2 chosen on a validation split),
sklearn (reference), sgd (the study's 150-epoch protocol from --training_config_path).

Example:
    python finetune_pre_extracted_features.py --dataset dtd --dataset_path /data/dtd \
        --from_checkpoint_path ckpts/acdc_resnet50_90.pth --seed 21
"""
from __future__ import annotations

import argparse
import json

from utils.cli import options_from_args, setup_logging
from utils.errors import exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("the study's flags")
    g.add_argument("--from_checkpoint_path", required=True, help="upstream checkpoint whose backbone is frozen")
    g.add_argument("--dataset", required=True, help="dataset name (see configs/datasets/)")
    g.add_argument("--dataset_path", help="dataset root on disk (layout auto-detected)")
    g.add_argument("--dataset_name", help="the dataset's name in run names and results.csv (default: an ImageFolder "
                                          "tree's folder name, else --dataset)")
    g.add_argument("--training_config_path", dest="trainer_config_path", help="trainer config of the sgd solver "
                   "(default: configs/trainers/study_linear_sgd.yaml, the study's protocol)")
    g.add_argument("--epochs", type=int, help="sgd: override the trainer config's epochs")
    g.add_argument("--batch_size", type=int, help="sgd: override the trainer config's batch size")
    g.add_argument("--seed", type=int, default=0, help="seed (sgd init and order; lbfgs validation split)")
    g.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is present")
    g.add_argument("--gpus", nargs="+", help="GPU id to use (the first is used)")
    o = p.add_argument_group("additions")
    o.add_argument("--checkpoint_flavour", help="flavour name or YAML path (auto-detected when omitted)")
    o.add_argument("--arch", help="the architecture of a bare state dict without config.json (timm:NAME, tv:NAME; "
                                  "python main.py --list-archs)")
    o.add_argument("--solver", default="lbfgs", help="lbfgs (default), sklearn or sgd")
    o.add_argument("--features_cache", default="features_cache", help="features cache directory")
    o.add_argument("--probe_config_path", help="lbfgs/sklearn settings (default: configs/probes/lbfgs.yaml)")
    o.add_argument("--feature_backend", default="torch",
                   help="torch (default), or an ONNX engine on the CPU: onnxruntime, openvino, sparse (our "
                        "kernels that skip zero weights; `make kernels`), deepsparse (if installed)")
    o.add_argument("--augment", action="store_true",
                   help="sgd on freshly augmented images every epoch through the frozen backbone (no cache)")
    o.add_argument("--normalization", choices=["imagenet", "checkpoint"], default="imagenet",
                   help="input statistics: ImageNet's (the study) or the checkpoint's")
    o.add_argument("--interpolation", choices=["bilinear", "bicubic"], help="override the flavour's resize")
    o.add_argument("--image_size", type=int,
                   help="input size (default: the size the checkpoint was trained at, else the model's)")
    o.add_argument("--max_train_samples", type=int, help="use a seeded subset of the train split")
    o.add_argument("--extract_batch_size", type=int, default=64, help="images per extraction batch")
    o.add_argument("--workers", type=int, default=4, help="data loader worker processes")
    o.add_argument("--experiment_root_path", default="experiments/linear", help="where run directories go")
    o.add_argument("--exp_name", help="run directory name (default: DATASET_CHECKPOINT_linear-SOLVER_seedSEED)")
    o.add_argument("--model_label", help="the 'model' (method) column of results.csv, e.g. 'AC/DC'")
    o.add_argument("--sparsity_label", type=float, help="the 'sparsity' column (default: measured)")
    o.add_argument("--resume", action="store_true", help="report a finished run instead of refusing it")
    o.add_argument("--no_progress", action="store_true", help="no progress bars")
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from utils.runs import RUNS  # here, not at the top: --help stays fast

    kind = RUNS.get("linear")
    result = kind.run(options_from_args(args, kind.options))
    shown = {k: result.record[k] for k in ("dset", "model", "sparsity", "seed", "solver", "val_acc", "l2",
                                           "measured_sparsity", "run_dir") if k in result.record}
    print(json.dumps(shown))
    return result.record


if __name__ == "__main__":
    main()
