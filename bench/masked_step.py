"""Time of a masked fine-tuning step relative to a plain dense step, same model and batch.

    python bench/masked_step.py [--arch resnet50] [--batch 16] [--size 224] [--steps 10] [--sparsity 0.9]

Both steps are SGD+momentum+weight decay; the masked one also zeroes pruned gradients after backward
and pruned weights after the step (FixedMaskPolicy). The steps alternate so drift hits both equally.
Target: ratio <= 1.05.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models import build_model  # noqa: E402
from policies.base import TrainState  # noqa: E402
from policies.masking import FixedMaskPolicy  # noqa: E402
from utils.sparsity import magnitude_mask, prunable_parameters  # noqa: E402


def make_step(model, optimizer, batch, policy=None, state=None):
    x, y = batch

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if policy:
            policy.on_after_backward(state)
        optimizer.step()
        if policy:
            policy.on_after_optimizer_step(state)
        if x.is_cuda:
            torch.cuda.synchronize()
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    batch = (torch.randn(args.batch, 3, args.size, args.size, device=device),
             torch.randint(0, 100, (args.batch,), device=device))

    def fresh():
        torch.manual_seed(0)
        model = build_model(args.arch, num_classes=100).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        return model, opt

    dense_model, dense_opt = fresh()
    sparse_model, sparse_opt = fresh()
    params = prunable_parameters(sparse_model, exclude_prefixes=[sparse_model.classifier_name])
    policy = FixedMaskPolicy({n: magnitude_mask(w, args.sparsity) for n, w in params.items()})
    state = TrainState(model=sparse_model, forward_model=sparse_model, optimizer=sparse_opt, device=device,
                       steps_per_epoch=1, num_epochs=1, seed=0)
    policy.on_fit_start(state)
    dense_step = make_step(dense_model, dense_opt, batch)
    masked_step = make_step(sparse_model, sparse_opt, batch, policy, state)
    for _ in range(2):  # warm-up
        dense_step(), masked_step()
    dense_t, masked_t = [], []
    for _ in range(args.steps):
        for fn, times in ((dense_step, dense_t), (masked_step, masked_t)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    d, m = statistics.median(dense_t), statistics.median(masked_t)
    print(f"{args.arch} batch {args.batch} at {args.size}px on {device}, {len(policy.masks)} masked tensors "
          f"at {args.sparsity:.0%} sparsity, {args.steps} steps each (median)")
    print(f"dense step  {d * 1000:8.1f} ms")
    print(f"masked step {m * 1000:8.1f} ms")
    print(f"ratio masked/dense = {m / d:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
