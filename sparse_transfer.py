"""Sparse transfer the Sparsify way: a use case, an ImageFolder tree and an optim level -> a deployable model.

    python sparse_transfer.py --use-case image_classification --data /data/flowers --optim-level 0.5

Without --model, configs/zoo.yaml (--zoo) lists your upstream checkpoints and the optim level picks one:
0 the largest dense model (fp32, no optimizations); < 0.25 the largest dense model + INT8; < 0.5 the
largest pruned model + INT8; < 0.75 the medium pruned model + INT8; <= 1 the smallest pruned model + INT8
(size = nonzero backbone parameters; see configs/zoo.yaml). INT8 means quantization-aware training at
the end of the transfer (configs/recipes/sparse_transfer_resnet50.yaml; level 0 runs
configs/recipes/sparse_transfer_fp32.yaml). The run fine-tunes keeping every zero, exports ONNX (fp32, and
INT8 QDQ), times it in ONNX Runtime against a dense model, and writes summary.json + summary.md.
Data: DIR/train/<class>/<image> and DIR/val/<class>/<image> (or test/).

Detection (`--use-case detection --data data.yaml`): the zoo's YOLOv5 entries only, the seed-001 YOLOv5 recipe
(configs/recipes/yolov5_sparse_transfer.yaml; fp32 levels: yolov5_sparse_transfer_fp32.yaml), the trainer config
configs/trainers/yolov5_finetune.yaml, and mAP in the summary.
"""
from __future__ import annotations

import argparse

from utils.cli import options_from_args, setup_logging
from utils.errors import exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--use-case", "--use_case", dest="use_case", required=True,
                   help="cv-classification or an alias (ic, classification, image-classification; case, '-' and "
                        "'_' ignored) or cv-detection (detection, od: YOLOv5); segmentation and NLP use cases are "
                        "not supported yet")
    p.add_argument("--data", required=True, help="classification: ImageFolder root (train/<class>/<image> + val/ or "
                                                 "test/); detection: the YOLO dataset's data.yaml")
    p.add_argument("--model", help="upstream checkpoint to use instead of the zoo's choice")
    p.add_argument("--flavour", "--checkpoint_flavour", dest="flavour",
                   help="--model's checkpoint flavour (auto-detected when omitted)")
    p.add_argument("--optim-level", "--optim_level", dest="optim_level", type=float, default=0.5,
                   help="0..1: how much to optimise (default 0.5: the medium pruned model + INT8)")
    p.add_argument("--recipe", help="override the recipe (default: by optim level, see above)")
    p.add_argument("--recipe_args", "--recipe-args", dest="recipe_args",
                   help="override recipe variables: JSON '{\"num_epochs\": 30}' or 'num_epochs=30,init_lr=0.05'")
    p.add_argument("--zoo", help="the model zoo file (default: $SPARSE_TRANSFER_ZOO, else configs/zoo.yaml)")
    p.add_argument("--out", help="run directory (default: experiments/sparse_transfer/DATA_MODEL_optimL_seedS)")
    p.add_argument("--config_path", help="trainer config naming the optimizer and batch size (default: "
                                         "configs/trainers/study_full_lr001.yaml; detection: yolov5_finetune.yaml)")
    p.add_argument("--batch_size", type=int, help="override the trainer config's batch size")
    p.add_argument("--accumulate_steps", type=int, help="one optimizer step per N batches (their mean gradient; "
                                                         "default: the trainer config's)")
    p.add_argument("--image_size", type=int,
                   help="input size (default: the size the checkpoint was trained at, else the model's)")
    p.add_argument("--workers", type=int, default=4, help="data loader worker processes")
    p.add_argument("--seed", type=int, default=0, help="seed for everything random")
    p.add_argument("--cpu", action="store_true", help="train on CPU even when CUDA is present")
    p.add_argument("--resume", action="store_true", help="continue (or re-export) the run in --out")
    p.add_argument("--latency_batch_size", type=int, default=1, help="batch size of the latency comparison")
    p.add_argument("--latency_runs", type=int, default=20, help="timed calls per model and engine")
    p.add_argument("--engine", help="inference engine of the summary: onnxruntime, openvino, sparse, deepsparse "
                                    "(default: every installed one is timed and the fastest is used)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from utils.sparsify import SparseTransferOptions, run_sparse_transfer, summary_markdown

    opts = options_from_args(args, SparseTransferOptions)
    summary = run_sparse_transfer(opts)
    print(summary_markdown(summary))
    return summary


if __name__ == "__main__":
    main()
