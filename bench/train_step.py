"""Training-step speed against the machine's limit, measured side by side in one run.

    python bench/train_step.py [--archs resnet18 resnet50 yolov5s] [--batch 16] [--size 160] [--steps 5] [--compile]

For each architecture: images/s of one SGD training step (forward, backward, step; a classifier's cross-entropy
over 100 classes, a detector's YOLOv5 loss on 3 boxes per image of 20 classes with YOLOv5's parameter groups) in fp32,
bf16 (autocast), and bf16 + channels-last, dense and with the masks held (90% magnitude masks through a
recipe's ConstantPruningModifier), plus torch.compile with --compile. The step's FLOPs are counted by
torch's FlopCounterMode and shown as a fraction of the machine's measured matmul throughput (a 2048x2048 fp32
and bf16 matmul timed in the same run): that fraction is how close each variant comes to the limit. Variants
alternate inside each round so drift hits all alike. Last: the input pipeline alone (images/s of a DataLoader
with the study's 224-px training transforms on decoded 256x256 JPEGs, 2 workers), to show whether a run is
input-bound. On CUDA (when present) the same runs on the GPU.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import emit, hold_sparse_masks, matmul_gflops, policy_step, sync  # noqa: E402

from models import build_model, model_task  # noqa: E402
from policies.base import TrainState  # noqa: E402
from policies.events import Event  # noqa: E402
from policies.tasks import autocast_for  # noqa: E402
from utils.data import build_transforms  # noqa: E402
from utils.detection import YoloLoss  # noqa: E402
from utils.detection.task import yolov5_param_groups  # noqa: E402


class Step:
    """One model + optimizer (+ the masks' policies) in one precision and memory format."""

    def __init__(self, arch: str, device: torch.device, *, precision: str, channels_last: bool, masked: bool,
                 compile_model: bool, batch: torch.Tensor, labels: torch.Tensor):
        torch.manual_seed(0)
        self.model = build_model(arch, num_classes=classes_of(arch)).to(device)
        self.device, self.precision = device, precision
        self.batch, self.labels = batch, labels
        self.criterion = criterion_of(self.model, batch.shape[-1])
        self.policies = hold_sparse_masks(self.model, 0.9) if masked else []
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.batch = batch.contiguous(memory_format=torch.channels_last)
        detector = model_task(arch) == "detection"
        params = yolov5_param_groups(self.model, 5e-4) if detector else self.model.parameters()
        self.optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
        self.state = TrainState(model=self.model, forward_model=self.model, optimizer=self.optimizer, device=device,
                                steps_per_epoch=10**6, num_epochs=1, seed=0)
        self.emit(Event.FIT_START)
        self.forward = torch.compile(self.model) if compile_model else self.model

    def emit(self, event: Event) -> None:
        emit(self.policies, event, self.state)

    def loss(self) -> torch.Tensor:
        with autocast_for(self.device, self.precision):
            return self.criterion(self.forward(self.batch), self.labels)

    def __call__(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        policy_step(self.policies, self.state, self.loss)
        sync(self.device)
        return time.perf_counter() - start


def classes_of(arch: str) -> int:
    return 20 if model_task(arch) == "detection" else 100


def criterion_of(model: torch.nn.Module, size: int) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """The training loss: YOLOv5's for a detector (targets: boxes), cross-entropy for a classifier (labels)."""
    if getattr(model, "task", "classification") == "detection":
        return YoloLoss(model.get_classifier(), imgsz=size)
    return F.cross_entropy


def fixed_targets(arch: str, batch: int, gen: torch.Generator) -> torch.Tensor:
    """Labels for a classifier; for a detector 3 boxes per image (image, class, cx, cy, w, h; normalised)."""
    if model_task(arch) != "detection":
        return torch.randint(0, classes_of(arch), (batch,), generator=gen)
    n = batch * 3
    return torch.cat([torch.arange(batch).repeat_interleave(3)[:, None].float(),
                      torch.randint(0, classes_of(arch), (n, 1), generator=gen).float(),
                      0.2 + 0.6 * torch.rand(n, 2, generator=gen), 0.05 + 0.2 * torch.rand(n, 2, generator=gen)], 1)


def step_flops(arch: str, batch: torch.Tensor, labels: torch.Tensor) -> float:
    model = build_model(arch, num_classes=classes_of(arch)).to(batch.device)
    with FlopCounterMode(display=False) as counter:
        criterion_of(model, batch.shape[-1])(model(batch), labels).backward()
    return float(counter.get_total_flops())


def bench_arch(arch: str, device: torch.device, args: argparse.Namespace, limits: dict[str, float]) -> None:
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
    labels = fixed_targets(arch, args.batch, gen).to(device)
    flops = step_flops(arch, batch, labels)
    kinds = (("fp32", False), ("fp32", True)) + ((("bf16", False), ("bf16", True)) if args.bf16 else ())
    variants = {f"{p}{' +CL' if cl else ''}{' masked' if m else ''}": (p, cl, m, False)
                for p, cl in kinds for m in (False, True)}
    if args.compile:
        variants["bf16 +CL compiled"] = ("bf16", True, False, True)
    steps = {name: Step(arch, device, precision=p, channels_last=cl, masked=m, compile_model=c, batch=batch,
                        labels=labels) for name, (p, cl, m, c) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.steps + 2):
        order = list(steps) if i % 2 else list(reversed(steps))
        for name in order:
            elapsed = steps[name]()
            if i >= 2:
                times[name].append(elapsed)
    base = statistics.median(times["fp32"])
    print(f"\n{arch}, batch {args.batch}, {args.size} px, {flops / 1e9:.1f} GFLOP per step ({device.type})")
    print(f"{'variant':<24}{'ms/step':>9}{'images/s':>10}{'vs fp32':>9}{'of limit':>10}")
    for name, values in times.items():
        t = statistics.median(values)
        limit = limits["bf16" if name.startswith("bf16") else "fp32"]
        print(f"{name:<24}{t * 1e3:>9.0f}{args.batch / t:>10.1f}{base / t:>8.2f}x{flops / t / 1e9 / limit:>9.0%}")


class JpegImages(Dataset):
    """Decoded-on-the-fly 256x256 JPEGs through the study's training transforms."""

    def __init__(self, count: int):
        rng = np.random.default_rng(0)
        self.blobs = []
        for _ in range(count):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buf, format="JPEG")
            self.blobs.append(buf.getvalue())
        self.transform = build_transforms(train=True, image_size=None, interpolation="bilinear",
                                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int):
        return self.transform(Image.open(io.BytesIO(self.blobs[i])).convert("RGB")), 0


def input_pipeline(batch: int) -> None:
    loader = DataLoader(JpegImages(256), batch_size=batch, num_workers=2)
    next(iter(loader))
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        seen += len(images)
    print(f"\ninput pipeline (224 px study transforms, JPEG decode, 2 workers): "
          f"{seen / (time.perf_counter() - start):.0f} images/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["resnet18", "resnet50", "yolov5s"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation on CPU)")
    p.add_argument("--force-bf16", action="store_true", help="time bf16 even where its matmuls are slow")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    limits = {"fp32": matmul_gflops(device, torch.float32), "bf16": matmul_gflops(device, torch.bfloat16, n=1024,
                                                                                   reps=2)}
    capability = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else device.type
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {capability}; measured "
          f"matmul limit: fp32 {limits['fp32']:.0f} GFLOP/s, bf16 {limits['bf16']:.1f} GFLOP/s")
    args.bf16 = args.force_bf16 or limits["bf16"] >= limits["fp32"] / 2
    if not args.bf16:
        print(f"bf16 matmuls run {limits['fp32'] / limits['bf16']:.0f}x slower than fp32 here (no AVX-512 BF16 / AMX "
              "kernels in use): bf16 variants skipped (--force-bf16 times them anyway); train in fp32 on this machine")
    for arch in args.archs:
        bench_arch(arch, device, args, limits)
    input_pipeline(args.batch)


if __name__ == "__main__":
    main()
