"""Detection speed, measured side by side in one run:

1. a YOLOv5 training step (YOLOv5's loss on a fixed batch, SGD with its three parameter groups) with the masks
   held (a recipe's ConstantPruningModifier over every prunable weight, 50% sparse) against the same dense step;
2. ONNX Runtime latency of the exported yolov5s, fp32 against INT8 QDQ (QAT modules on model.0-23, observers
   calibrated on random images), at 320 and 640 px, batch 1.

    python bench/detect.py [--arch yolov5s] [--train-arch yolov5n] [--train-size 320] [--batch 8] [--steps 6]

Steps and engines alternate inside each round so drift hits all alike; the ratios are what to read.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import emit, hold_sparse_masks, policy_step  # noqa: E402

from models import build_model  # noqa: E402
from policies.base import TrainState  # noqa: E402
from policies.events import Event  # noqa: E402
from policies.qat.modules import prepare_qat_, quantizable_modules, set_observers_  # noqa: E402
from utils.deploy import export_onnx, onnx_session  # noqa: E402
from utils.detection import YoloLoss  # noqa: E402
from utils.detection.task import yolov5_param_groups  # noqa: E402


class Trainer:
    """One detector, optimizer and (optionally) the recipe holding its masks, stepping on a fixed batch."""

    def __init__(self, arch: str, *, size: int, masked: bool):
        torch.manual_seed(0)
        self.model = build_model(arch, num_classes=20)
        policies = hold_sparse_masks(self.model, 0.5)    # both start from the same 50%-sparse weights
        self.optimizer = torch.optim.SGD(yolov5_param_groups(self.model, 5e-4), lr=1e-3, momentum=0.937, nesterov=True)
        self.state = TrainState(model=self.model, forward_model=self.model, optimizer=self.optimizer,
                                device=torch.device("cpu"), steps_per_epoch=10**6, num_epochs=1, seed=0)
        self.policies = policies if masked else []
        self.loss = YoloLoss(self.model.get_classifier(), imgsz=size)
        self.emit(Event.FIT_START)

    def emit(self, event: Event) -> None:
        emit(self.policies, event, self.state)

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> float:
        start = time.perf_counter()
        policy_step(self.policies, self.state, lambda: self.loss(self.model(images), targets))
        return time.perf_counter() - start


def training_step_ratio(arch: str, size: int, batch: int, steps: int) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=gen)
    boxes = torch.cat([torch.arange(batch).repeat_interleave(3)[:, None].float(),
                       torch.randint(0, 20, (batch * 3, 1), generator=gen).float(),
                       0.2 + 0.6 * torch.rand(batch * 3, 2, generator=gen), 0.05 + 0.2 * torch.rand(batch * 3, 2,
                                                                                                  generator=gen)], 1)
    dense, masked = Trainer(arch, size=size, masked=False), Trainer(arch, size=size, masked=True)
    times = {"dense": [], "masked": []}
    for i in range(steps + 1):
        for name, t in (("dense", dense), ("masked", masked)) if i % 2 else (("masked", masked), ("dense", dense)):
            elapsed = t.step(images, boxes)
            if i:                                    # the first round warms up
                times[name].append(elapsed)
    return statistics.median(times["dense"]), statistics.median(times["masked"])


def onnx_pair(arch: str, size: int, folder: Path) -> tuple[Path, Path]:
    """fp32 and INT8 QDQ ONNX of `arch` at `size` (QAT on model.0-23, observers calibrated on random images)."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=80).eval()
    fp32 = export_onnx(model, folder / f"{arch}_{size}_fp32.onnx", input_size=size)
    names = quantizable_modules(model, submodules=[f"model.{i}" for i in range(24)], ignore=[])
    prepare_qat_(model, names)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 3, size, size))
    set_observers_(model, False)
    int8 = export_onnx(model.eval(), folder / f"{arch}_{size}_int8.onnx", input_size=size)
    return fp32, int8


def latencies(paths: dict[str, Path], size: int, runs: int) -> dict[str, float]:
    sessions = {k: onnx_session(p, threads=torch.get_num_threads()) for k, p in paths.items()}
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for i in range(runs + 3):
        for k, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {"input": x})
            if i >= 3:
                times[k].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="yolov5s", help="the exported detector (ONNX Runtime latency)")
    p.add_argument("--train-arch", default="yolov5n", help="the detector of the training-step comparison")
    p.add_argument("--train-size", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    dense, masked = training_step_ratio(args.train_arch, args.train_size, args.batch, args.steps)
    print(f"training step, {args.train_arch} at {args.train_size} px, batch {args.batch}: dense {dense * 1e3:.0f} ms, "
          f"masked (50%, ConstantPruningModifier) {masked * 1e3:.0f} ms  ratio masked/dense {masked / dense:.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (320, 640):
            fp32, int8 = onnx_pair(args.arch, size, Path(tmp))
            lat = latencies({"fp32": fp32, "int8": int8}, size, args.runs)
            print(f"ONNX Runtime {args.arch} at {size} px, batch 1: fp32 {lat['fp32']:.1f} ms, "
                  f"INT8 {lat['int8']:.1f} ms"
                  f"  speed-up {lat['fp32'] / lat['int8']:.2f}x  (files {fp32.stat().st_size / 1e6:.1f} MB / "
                  f"{int8.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
