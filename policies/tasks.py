"""What a run learns, as the Manager sees it: a Task says how a batch reaches the device, what the training loss
is, which training statistics are kept and how the test split is scored. The loop, the events and every
policy are the same for every task (classification here; detection in `utils.detection`).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

PRECISIONS = ("fp32", "bf16", "fp16")


def fastest_precision(device: torch.device) -> str:
    """'bf16' where it is supported and faster than fp32 on a small convolution (AVX-512 BF16 / AMX CPUs, recent
    GPUs), else 'fp32'. A probe of well under a second, because whether the CPU's bf16 kernels are in use cannot be
    read reliably from its flags (a VM may hide them)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    x, w = torch.randn(8, 64, 28, 28), torch.randn(64, 64, 3, 3)
    timings = {}
    for precision in ("fp32", "bf16"):
        with torch.no_grad(), autocast_for(device, precision):
            torch.nn.functional.conv2d(x, w, padding=1)
            start = time.perf_counter()
            for _ in range(3):
                torch.nn.functional.conv2d(x, w, padding=1)
            timings[precision] = time.perf_counter() - start
    return "bf16" if timings["bf16"] * 1.3 < timings["fp32"] else "fp32"


def autocast_for(device: torch.device, precision: str):
    """The autocast context of a precision: bf16 on CPU or CUDA, fp16 on CUDA; fp32 is no autocast. The weights
    stay fp32 (master weights), so the masks stay exact."""
    if precision == "fp32" or (precision == "fp16" and device.type != "cuda"):
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class Task:
    """The interface; `ClassificationTask` is the reference implementation."""

    name = "task"
    metric = "test_acc"              # the result a run reports (the final epoch's, on the test split)

    channels_last = False            # the run's --channels_last: 4-D inputs in NHWC memory order
    # The loss is a mean over the batch (False), or grows with it (YOLOv5's: its mean times the batch size):
    # accumulated batches then add their losses as they are, as one batch of their combined size would.
    loss_grows_with_batch = False

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict] | None:
        """The optimizer's parameter groups this task wants (None: the trainer config's)."""
        return None

    def to_device(self, inputs: Any, targets: Any, device: torch.device) -> tuple[Any, Any]:
        inputs = inputs.to(device, non_blocking=True)
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, targets.to(device, non_blocking=True)

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def new_stats(self, device: torch.device) -> dict[str, Any]:
        """Running training statistics of one epoch (tensors on the device: no sync per step)."""
        return {"loss": torch.zeros((), device=device), "seen": 0}

    def update_stats(self, stats: dict[str, Any], outputs: Any, targets: Any, loss: torch.Tensor) -> None:
        n = self.batch_items(targets)
        stats["loss"] += loss.detach() * n
        stats["seen"] += n

    def finish_stats(self, stats: dict[str, Any]) -> dict[str, float]:
        return {"train_loss": (stats["loss"] / max(stats["seen"], 1)).item()}

    def batch_items(self, targets: Any) -> int:
        return int(targets.shape[0])

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, *,
                 precision: str = "fp32") -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError


class ClassificationTask(Task):
    """Cross-entropy (optionally label-smoothed); top-1 accuracy."""

    name = "classification"

    def __init__(self, label_smoothing: float = 0.0):
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(outputs, targets)

    def new_stats(self, device: torch.device) -> dict[str, Any]:
        return {**super().new_stats(device), "correct": torch.zeros((), device=device)}

    def update_stats(self, stats: dict[str, Any], outputs: Any, targets: Any, loss: torch.Tensor) -> None:
        super().update_stats(stats, outputs, targets, loss)
        stats["correct"] += (outputs.detach().argmax(1) == targets).sum()

    def finish_stats(self, stats: dict[str, Any]) -> dict[str, float]:
        return {**super().finish_stats(stats), "train_acc": (stats["correct"] / max(stats["seen"], 1)).item()}

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, *,
                 precision: str = "fp32") -> dict[str, float]:
        return evaluate_classifier(model, loader, device, precision=precision)


@torch.inference_mode()
def evaluate_classifier(model: nn.Module, loader: DataLoader, device: torch.device, *,
                        precision: str = "fp32") -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy on a loader."""
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast_for(device, precision):
            logits = model(inputs)
        total_loss += nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item()
        correct += (logits.argmax(1) == targets).sum().item()
        seen += targets.numel()
    model.train(was_training)
    return {"test_loss": total_loss / max(seen, 1), "test_acc": correct / max(seen, 1)}
