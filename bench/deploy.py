"""Deployment numbers for a sparse ResNet on CPU, measured in one run:
ONNX Runtime fp32 vs INT8 (QDQ) latency, and the checkpoint's size dense vs bitmask + nonzeros.

    python bench/deploy.py [--arch resnet50] [--sparsity 0.9] [--size 224] [--batch 1] [--runs 20] [--threads 2]
    python bench/deploy.py --checkpoint RUN_DIR/model.pt      # a trained (QAT) checkpoint instead

Without --checkpoint the model is randomly initialised, magnitude-pruned to --sparsity, and its QAT
observers are calibrated on random batches (latency does not depend on the weights' values). The two
sessions alternate so machine drift hits both equally; the median per-batch latency is reported.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models import build_model  # noqa: E402
from policies.quantization import (freeze_bn_stats_, load_qat_state_, prepare_qat_, qat_modules,  # noqa: E402
                                   quantizable_modules, set_observers_)
from utils.checkpoints import load_checkpoint  # noqa: E402
from utils.deploy import compare_with_torch, compressed_size_report, export_onnx, onnx_session  # noqa: E402
from utils.sparsity import magnitude_prune_  # noqa: E402


def random_sparse_model(arch: str, sparsity: float, size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(float model, its QAT twin calibrated on random batches), pruned to `sparsity` (classifier excluded)."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=1000).eval()
    magnitude_prune_(model, sparsity)
    qat = build_model(arch, num_classes=1000)
    qat.load_state_dict(model.state_dict())
    prepare_qat_(qat, quantizable_modules(qat))
    qat.train()
    freeze_bn_stats_(qat)
    with torch.no_grad():
        for _ in range(3):
            qat(torch.randn(4, 3, size, size))
    set_observers_(qat, False)
    return model, qat.eval()


def from_checkpoint(path: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(float model, its QAT twin with the file's quantization state), both read from one load of `path`."""
    loaded = load_checkpoint(path, keep_classifier=True)
    quant = loaded.extra.get("quantization")
    if not quant or not quant.get("modules"):
        raise SystemExit(f"{path} holds no quantization state: train it with a recipe that has a QuantizationModifier")
    model = loaded.model.eval()
    qat = copy.deepcopy(model)
    load_qat_state_(qat, quant)
    return model, qat.eval()


def latency_ms(sessions: dict[str, object], x, *, runs: int) -> dict[str, float]:
    feed = {"input": x.numpy()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(3):
        for s in sessions.values():
            s.run(None, feed)
    for _ in range(runs):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feed)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--checkpoint", help="a QAT-trained checkpoint (model.pt of a recipe run)")
    args = p.parse_args()

    if args.checkpoint:
        model, qat = from_checkpoint(args.checkpoint)
        args.size = getattr(model, "default_input_size", args.size)
        label = args.checkpoint
    else:
        model, qat = random_sparse_model(args.arch, args.sparsity, args.size)
        label = f"{args.arch} pruned to {args.sparsity:.0%} (random weights)"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32 = export_onnx(model, tmp / "fp32.onnx", input_size=args.size)
        int8 = export_onnx(qat, tmp / "int8.onnx", input_size=args.size)
        sessions = {"fp32": onnx_session(fp32, threads=args.threads), "int8": onnx_session(int8, threads=args.threads)}
        x = torch.randn(args.batch, 3, args.size, args.size)
        times = latency_ms(sessions, x, runs=args.runs)
        agreement = compare_with_torch(qat, int8, torch.randn(16, 3, args.size, args.size), batch_size=8)
        size = compressed_size_report(model.state_dict(), tmp / "compressed.pt")
        onnx_mb = {k: v.stat().st_size / 1e6 for k, v in (("fp32", fp32), ("int8", int8))}

    print(f"model: {label}; input {args.batch}x3x{args.size}x{args.size}; ONNX Runtime CPU, "
          f"threads {args.threads or 'default'}; {len(qat_modules(qat))} quantized layers")
    print(f"latency  fp32 {times['fp32']:8.2f} ms   int8 {times['int8']:8.2f} ms   "
          f"ratio fp32/int8 {times['fp32'] / times['int8']:.2f}x")
    print(f"int8 vs fake-quantized torch: top-1 agreement {agreement['top1_agreement']:.2%}, "
          f"max |diff| {agreement['max_abs_diff']:.3g}")
    print(f"checkpoint  dense {size['dense_bytes'] / 1e6:8.2f} MB   bitmask+nonzeros "
          f"{size['compressed_bytes'] / 1e6:8.2f} MB   ratio dense/compressed {size['ratio']:.2f}x")
    print(f"onnx files  fp32 {onnx_mb['fp32']:8.2f} MB   int8 {onnx_mb['int8']:8.2f} MB   "
          f"ratio {onnx_mb['fp32'] / onnx_mb['int8']:.2f}x")


if __name__ == "__main__":
    main()
