"""Feature-extraction throughput of the torch backend and every installed ONNX engine, same model and images.

    python bench/extract.py [--arch resnet50] [--size 224] [--images 64] [--batch 16] [--sparsity 0.9]

The backbone is frozen, in eval mode, magnitude-pruned to --sparsity (onnxruntime and openvino, unlike
DeepSparse, do not exploit unstructured sparsity: expect about the dense speed). All backends run on the CPU by
default (the engines only run there); --torch_device cuda times torch on the GPU instead. Each backend does one
untimed warm-up batch, then the timed passes alternate so drift hits all equally. Prints images/s per backend,
the ratio to torch, and the largest relative difference of each engine's features to torch's.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models import build_model  # noqa: E402
from utils.linear import build_backend  # noqa: E402
from utils.onnx.engines import available_engines  # noqa: E402
from utils.sparsity import magnitude_prune_  # noqa: E402


def images_per_second(run, batches: list[torch.Tensor]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = [run(b) for b in batches]
    return sum(len(b) for b in batches) / (time.perf_counter() - start), np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=2, help="timed passes per backend (alternating)")
    p.add_argument("--torch_device", default="cpu")
    args = p.parse_args()

    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=1000)
    if args.sparsity > 0:
        magnitude_prune_(model, args.sparsity)
    model.eval()
    images = torch.randn(args.images, 3, args.size, args.size)
    batches = list(images.split(args.batch))
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(workdir=Path(tmp), input_size=args.size)
        start = time.perf_counter()
        backends = {"torch": build_backend("torch", model, device=torch.device(args.torch_device), **common)}
        for engine in available_engines():
            backends[engine] = build_backend(engine, model, device=torch.device("cpu"), **common)
        print(f"{args.arch} at {args.size}px, sparsity {args.sparsity}, {args.images} images in batches of "
              f"{args.batch}; torch threads {torch.get_num_threads()}, torch device {args.torch_device}; "
              f"setup incl. ONNX export {time.perf_counter() - start:.1f} s")
        for run in backends.values():
            run(batches[0])  # warm-up
        rates = {name: [] for name in backends}
        features = {}
        for _ in range(args.repeats):
            for name, run in backends.items():
                rate, features[name] = images_per_second(run, batches)
                rates[name].append(rate)
    best = {name: max(r) for name, r in rates.items()}
    for name, rate in best.items():
        print(f"{name:12s} {rate:8.1f} images/s   (passes: {', '.join(f'{r:.1f}' for r in rates[name])})")
    ref = features["torch"]
    for name in backends:
        if name != "torch":
            rel = np.linalg.norm(features[name] - ref, axis=1) / np.linalg.norm(ref, axis=1)
            print(f"{name} / torch: {best[name] / best['torch']:.2f}x images/s; "
                  f"max relative feature difference {rel.max():.1e}")


if __name__ == "__main__":
    main()
