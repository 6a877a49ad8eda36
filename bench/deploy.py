"""Deploying a sparse model on CPU: every installed engine side by side, and what sparsity buys in each.

    python bench/deploy.py [--arch resnet50] [--size 224] [--batches 1 16] [--runs 20] [--precision default|f32]
    python bench/deploy.py --checkpoint RUN_DIR/model.pt      # one trained (QAT) checkpoint instead of the variants

One table from one run: for a dense model, 80/90/95% unstructured magnitude sparsity, 2:4 (N:M) and block-4 at 80%
(the masks the project's recipes make), each in fp32 and INT8 (QDQ, from a QAT twin calibrated on random batches;
latency does not depend on the weights' values), every installed engine's median latency at each batch size
(threads = cores), the ratio to ONNX Runtime's dense fp32 at that batch size, the precision the engine really
used, and the file sizes (ONNX, and the bitmask + nonzeros checkpoint). All engines and files take turns inside
every round, so machine drift hits all alike. Beside it the physical limit: the model's FLOPs and the machine's
measured fp32 matmul throughput (a 2048x2048 matmul timed in the same run), and each latency as a fraction of
that limit. `--precision f32` pins OpenVINO to fp32 (its default on AVX-512 BF16 / AMX CPUs is bf16).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import matmul_gflops  # noqa: E402

from models import build_model, model_task  # noqa: E402
from policies.qat.modules import calibrated_qat_, load_qat_state_  # noqa: E402
from utils.checkpoints import load_checkpoint  # noqa: E402
from utils.deploy import compressed_size_report, export_onnx  # noqa: E402
from utils.onnx.engines import ENGINES, load_engine, median_latency_ms, missing  # noqa: E402
from utils.sparsity import prunable_parameters  # noqa: E402
from utils.sparsity.structured import make_masks, parse_mask_type  # noqa: E402

# (label, sparsity, mask type): the masks the project can make.
VARIANTS = [("dense", 0.0, "unstructured"), ("80%", 0.8, "unstructured"), ("90%", 0.9, "unstructured"),
            ("95%", 0.95, "unstructured"), ("2:4", 0.5, "2:4"), ("block4 80%", 0.8, "block4")]


def forward_flops(model: torch.nn.Module, size: int) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return float(counter.get_total_flops())


def sparsify_(model: torch.nn.Module, sparsity: float, mask_type: str) -> None:
    """Magnitude masks of `mask_type` at `sparsity` on every prunable weight (classifier excluded; N:M skips the
    layers whose input channels it cannot group, such as the 3-channel stem)."""
    if sparsity == 0:
        return
    kind = parse_mask_type(mask_type)
    params = prunable_parameters(model, exclude_prefixes=[model.classifier_name])
    if kind.kind == "nm":
        params = {n: p for n, p in params.items() if p.dim() > 1 and p.shape[1] % kind.block == 0}
    masks = make_masks(params, sparsity, mask_type=kind, global_scope=False)
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def classes(arch: str) -> int:
    """ImageNet's 1000 for a classifier, COCO's 80 for a detector."""
    return 80 if model_task(arch) == "detection" else 1000


def qat_twin(model: torch.nn.Module, arch: str, size: int) -> torch.nn.Module:
    """A copy with fake quantization, its observers calibrated on random batches, then frozen."""
    qat = build_model(arch, num_classes=classes(arch))
    qat.load_state_dict(model.state_dict())
    return calibrated_qat_(qat, (torch.randn(4, 3, size, size) for _ in range(3)))


def variants(args: argparse.Namespace) -> list[tuple[str, torch.nn.Module, torch.nn.Module]]:
    """(label, fp32 model, its QAT twin) per variant."""
    if args.checkpoint:
        loaded = load_checkpoint(args.checkpoint, keep_classifier=True)
        quant = loaded.extra.get("quantization")
        if not quant or not quant.get("modules"):
            raise SystemExit(f"{args.checkpoint} holds no quantization state: train it with a recipe that has a "
                             "QuantizationModifier")
        model = loaded.model.eval()
        qat = copy.deepcopy(model)
        load_qat_state_(qat, quant)
        args.size = loaded.input_size or args.size
        return [(Path(args.checkpoint).parent.name, model, qat.eval())]
    out = []
    for label, sparsity, mask_type in VARIANTS:
        torch.manual_seed(0)
        model = build_model(args.arch, num_classes=classes(args.arch)).eval()
        sparsify_(model, sparsity, mask_type)
        out.append((label, model, qat_twin(model, args.arch, args.size)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--runs", type=int, default=20, help="timed rounds at batch 1 (larger batches: a quarter, >= 5)")
    p.add_argument("--precision", default="default", choices=["default", "f32"],
                   help="'f32' pins engines with a choice (OpenVINO) to fp32")
    p.add_argument("--engines", nargs="+", default=None, help="default: every registered engine that is installed")
    p.add_argument("--checkpoint", help="a QAT-trained checkpoint (model.pt of a recipe run) instead of the variants")
    args = p.parse_args()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(threads)
    engines = args.engines or ENGINES.names()
    for name in list(engines):
        if why := missing(name):
            print(f"note: {why}")
            engines.remove(name)
    if "onnxruntime" not in engines:
        raise SystemExit("the table's reference is ONNX Runtime: install onnxruntime")
    limit = matmul_gflops()
    models = variants(args)
    flops = forward_flops(models[0][1], args.size)
    rows, runners = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, model, qat in models:
            safe = label.replace(" ", "_").replace(":", "-").replace("%", "")
            size = compressed_size_report(model.state_dict(), tmp / f"{safe}.pt")
            for kind, net in (("fp32", model), ("int8", qat)):
                path = export_onnx(net, tmp / f"{safe}_{kind}.onnx", input_size=args.size)
                rows.append({"variant": label, "kind": kind, "onnx_mb": path.stat().st_size / 1e6,
                             "ckpt_mb": size["compressed_bytes"] / 1e6, "dense_ckpt_mb": size["dense_bytes"] / 1e6})
                for engine in engines:
                    runners[(label, kind, engine)] = load_engine(engine, path, threads=threads,
                                                                 precision=args.precision)
        timed: dict[int, dict[str, float]] = {}
        for batch in args.batches:
            x = np.random.default_rng(0).standard_normal((batch, 3, args.size, args.size), dtype=np.float32)
            runs = args.runs if batch == 1 else max(5, args.runs // 4)
            timed[batch] = median_latency_ms({key: (lambda r=r: r.run(x)) for key, r in runners.items()},
                                             warmup=2, runs=runs)

    print(f"{args.checkpoint or args.arch} at {args.size} px: {flops / 1e9:.2f} GFLOP per image; "
          f"fp32 matmul limit {limit:.0f} GFLOP/s measured now ({threads} threads) -> "
          f"{flops / limit / 1e6:.2f} ms per image at the limit")
    head = f"{'variant':<11} {'kind':<5} {'ONNX MB':>8} {'ckpt MB':>8}  {'engine':<12} {'precision':<10}"
    for batch in args.batches:
        head += f" {'b' + str(batch) + ' ms':>9} {'vs ORT':>7} {'limit':>6}"
    print(head)
    for row in rows:
        for engine in engines:
            key = (row["variant"], row["kind"], engine)
            line = (f"{row['variant']:<11} {row['kind']:<5} {row['onnx_mb']:>8.1f} {row['ckpt_mb']:>8.1f}  "
                    f"{engine:<12} {runners[key].precision:<10}")
            for batch in args.batches:
                ms = timed[batch][key]
                reference = timed[batch][(rows[0]["variant"], "fp32", "onnxruntime")]
                line += f" {ms:>9.2f} {reference / ms:>6.2f}x {flops * batch / limit / 1e6 / ms:>6.0%}"
            print(line)
    print(f"'vs ORT': ONNX Runtime's {rows[0]['variant']} fp32 latency at that batch size / this one (higher is "
          "faster); 'limit': the fp32 matmul limit's time for the FLOPs / this latency; ckpt MB: bitmask + nonzeros "
          f"(dense {rows[0]['dense_ckpt_mb']:.1f} MB). Batch > 1 latencies are per batch.")


if __name__ == "__main__":
    main()
