"""Export a checkpoint for deployment: `python -m utils.deploy RUN_DIR/model.pt [--out DIR] [--num_samples 64]`.

Writes ONNX (fp32, plus INT8 QDQ for quantization-aware-trained models), checks each with `onnx.checker`,
runs it in ONNX Runtime and compares with the torch model on sample inputs (max |difference| of the
logits, top-1 agreement), and writes the checkpoint with its sparse tensors stored as bitmask + nonzero
values, reporting both file sizes.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from utils.cli import setup_logging
from utils.config import MIN_IMAGE_SIZE
from utils.deploy import ENGINES, deploy_checkpoint, describe_deployment, missing
from utils.errors import UserError, exit_on_user_error


def chosen_engines(names: list[str] | None) -> list[str] | None:
    """The engines asked for (each known and runnable here, else one line), ONNX Runtime first."""
    if names is None:
        return None
    for name in names:
        if name not in ENGINES.names():
            raise UserError(f"--engine {name}: unknown; engines: {', '.join(ENGINES.names())}")
        if why := missing(name):
            raise UserError(f"--engine {name}: {why}")
    return list(dict.fromkeys(["onnxruntime", *names]))


def check_flags(args: argparse.Namespace, out: Path) -> None:
    """Values the export cannot mean, each as one line naming the flag."""
    if args.num_samples < 1:
        raise UserError(f"--num_samples {args.num_samples}: compare on at least 1 input (default 64)")
    if args.image_size is not None and args.image_size < MIN_IMAGE_SIZE:
        raise UserError(f"--image_size {args.image_size}: at least {MIN_IMAGE_SIZE} px (default: the size the model "
                        "was trained at)")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; the export writes a folder (model_fp32.onnx, ...): name a folder")


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint (any flavour); QAT runs' model.pt also export INT8")
    p.add_argument("--out", help="output directory (default: next to the checkpoint, '<stem>_export')")
    p.add_argument("--flavour", "--checkpoint_flavour", dest="flavour",
                   help="checkpoint flavour (auto-detected when omitted)")
    p.add_argument("--image_size", type=int, help="input side length (default: the size the checkpoint was trained at)")
    p.add_argument("--num_samples", type=int, default=64, help="random sample inputs for the comparison")
    p.add_argument("--latency", action="store_true", help="also time the ONNX files in ONNX Runtime (batch 1, "
                                                         "median of 20 alternating calls)")
    p.add_argument("--engine", "--engines", dest="engines", nargs="+", metavar="NAME",
                   help="engines to check and time the ONNX files in (default: every installed one: "
                        f"{', '.join(ENGINES.names())}); ONNX Runtime is always checked, as the reference")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    path = Path(args.checkpoint)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    out = Path(args.out) if args.out else path.parent / f"{path.stem}_export"
    check_flags(args, out)
    report = deploy_checkpoint(path, out, latency=args.latency, flavour=args.flavour, image_size=args.image_size,
                               num_samples=args.num_samples, engines=chosen_engines(args.engines))
    print("\n".join(describe_deployment(report)))
    return report


if __name__ == "__main__":
    main()
