"""Where the sparse engine's time goes, layer shape by layer shape, at several batch sizes.

    python bench/sparse_layers.py [--arch resnet50] [--size 224] [--sparsity 0.9] [--batches 1 2 16]

Exports the model with magnitude masks at `--sparsity` (as `bench/deploy.py` makes them), loads it in the sparse
engine once per batch size and lets the engine calibrate every layer on that batch: the sparse kernels and torch's
dense operator, each timed by the engine's own calibration (median of its runs). Prints, per layer shape (kernel,
stride, input channels, input size; ResNet-50's bottlenecks repeat each shape), the ms per image of both ways at
each batch size, and the totals: whether a larger batch makes the kernels faster per image, and which shapes
dominate. The threads are the machine's cores; nothing else should run meanwhile.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deploy import classes, sparsify_  # noqa: E402

from models import build_model  # noqa: E402
from utils.deploy import export_onnx  # noqa: E402
from utils.onnx.graph import SparseGraph  # noqa: E402

WAYS = ("sparse", "dense")


def shape_of(layer, row: dict) -> str:
    """'3x3/1 256ch 14px' for a convolution, 'linear 2048' for a linear layer."""
    if layer.kind != "convolution":
        return f"linear {row['input'][-1]}"
    (kh, kw), stride = layer.packed.kernel, layer.packed.stride
    return f"{kh}x{kw}/{stride} {row['input'][1]}ch {row['input'][2]}px"


def per_image_ms(path: Path, batch: int, size: int, threads: int) -> dict[str, dict[str, float]]:
    """{shape: {way: ms per image summed over the layers of that shape}} from one calibration at `batch`."""
    graph = SparseGraph(path, threads=threads)
    graph.run(np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32))
    layers = {layer.name: layer for layer in graph.layers()}
    out: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(WAYS, 0.0))
    for row in graph.report():
        for way in WAYS:
            out[shape_of(layers[row["layer"]], row)][way] += row.get(f"{way}_ms", float("nan")) / batch
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 16])
    args = p.parse_args()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=classes(args.arch)).eval()
    sparsify_(model, args.sparsity, "unstructured")
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", input_size=args.size)
        timed = {batch: per_image_ms(path, batch, args.size, threads) for batch in args.batches}
    shapes = list(timed[args.batches[0]])
    head = " ".join(f"b{b:<5}" for b in args.batches)
    print(f"{args.arch} {args.size} px, {args.sparsity:.0%} unstructured, {threads} threads: ms per image")
    print(f"{'layer shape':<22} sparse kernels {head} | torch dense {head}")
    for shape in [*shapes, "total"]:
        cells = {b: timed[b].get(shape) or {w: sum(v[w] for v in timed[b].values()) for w in WAYS}
                 for b in args.batches}
        print(f"{shape:<22} {'':15}" + " ".join(f"{cells[b]['sparse']:6.2f}" for b in args.batches)
              + f" | {'':12}" + " ".join(f"{cells[b]['dense']:6.2f}" for b in args.batches))


if __name__ == "__main__":
    main()
