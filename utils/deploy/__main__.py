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

import torch

from utils.cli import setup_logging
from utils.deploy import export_checkpoint, onnx_latency_ms
from utils.errors import UserError, exit_on_user_error
from utils.io import atomic_write_json


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint (any flavour); QAT runs' model.pt also export INT8")
    p.add_argument("--out", help="output directory (default: next to the checkpoint, '<stem>_export')")
    p.add_argument("--flavour", help="checkpoint flavour (auto-detected when omitted)")
    p.add_argument("--image_size", type=int, help="input side length (default: the model's)")
    p.add_argument("--num_samples", type=int, default=64, help="random sample inputs for the comparison")
    p.add_argument("--latency", action="store_true", help="also time the ONNX files in ONNX Runtime (batch 1, "
                                                         "median of 20 alternating calls)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    path = Path(args.checkpoint)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    out = Path(args.out) if args.out else path.parent / f"{path.stem}_export"
    report = export_checkpoint(path, out, flavour=args.flavour, image_size=args.image_size,
                               num_samples=args.num_samples)
    atomic_write_json(out / "export_report.json", report)
    for kind in ("fp32", "int8"):
        if kind in report:
            r = report[kind]
            agreement = (f"box agreement {r['box_agreement']:.2%} (torch's {r['boxes']} top boxes)"
                         if "box_agreement" in r else f"top-1 agreement {r['top1_agreement']:.2%}")
            print(f"{kind}: {r['path']} ({r['bytes'] / 1e6:.2f} MB)  max |diff| {r['max_abs_diff']:.3g}  "
                  f"{agreement} on {r['num_samples']} inputs")
    if args.latency:
        files = {kind: report[kind]["path"] for kind in ("fp32", "int8") if kind in report}
        size = report["input_size"]
        timed = onnx_latency_ms(files, torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)))
        report["latency_ms"] = timed
        atomic_write_json(out / "export_report.json", report)
        print("ONNX Runtime, batch 1: " + ", ".join(f"{k} {v:.2f} ms" for k, v in timed.items())
              + (f"  (INT8 {timed['fp32'] / timed['int8']:.2f}x fp32)" if "int8" in timed else ""))
    s = report["size"]
    print(f"checkpoint: dense {s['dense_bytes'] / 1e6:.2f} MB, bitmask+nonzeros {s['compressed_bytes'] / 1e6:.2f} MB "
          f"({s['ratio']:.2f}x smaller)")
    return report


if __name__ == "__main__":
    main()
