"""Time of a masked fine-tuning step relative to a plain dense step, same model and batch.

    python bench/masked_step.py [--arch resnet50] [--batch 16] [--size 224] [--steps 10] [--sparsity 0.9]

All steps are SGD+momentum+weight decay. The masked ones also zero pruned gradients after backward and
pruned weights after the step, through the project's one mask mechanism (utils.sparsity.HeldMasks), held
two ways: fixed masks (FixedMaskPolicy, sparse fine-tuning) and a recipe's ConstantPruningModifier (the
policy every pruning modifier shares). The steps alternate so drift hits all equally. Target: ratio <= 1.05.
It also times the mask hooks alone, which is where the two ways could differ.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import HOLD as CONSTANT  # noqa: E402

from models import build_model  # noqa: E402
from policies.base import Policy, TrainState  # noqa: E402
from policies.events import Event  # noqa: E402
from policies.masking import FixedMaskPolicy  # noqa: E402
from policies.modifiers import build_recipe_policies  # noqa: E402
from policies.recipe.load import load_recipe_text  # noqa: E402
from utils.sparsity import magnitude_mask, prunable_parameters  # noqa: E402


class Variant:
    """One model + optimizer + the policies holding its masks, stepping on a fixed batch."""

    def __init__(self, arch: str, device: torch.device, *, masks: str | None, sparsity: float):
        torch.manual_seed(0)
        self.model = build_model(arch, num_classes=100).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        self.state = TrainState(model=self.model, forward_model=self.model, optimizer=self.optimizer, device=device,
                                steps_per_epoch=10**6, num_epochs=1, seed=0)
        params = prunable_parameters(self.model, exclude_prefixes=[self.model.classifier_name])
        with torch.no_grad():
            self.masks = {n: magnitude_mask(w, sparsity) for n, w in params.items()}
            for n, w in params.items():
                w.mul_(self.masks[n])
        self.policies: list[Policy] = []
        if masks == "fixed":
            self.policies = [FixedMaskPolicy(self.masks)]
        elif masks == "recipe":
            policies, _ = build_recipe_policies(load_recipe_text(CONSTANT, source="bench"), model=self.model,
                                                steps_per_epoch=10**6)
            self.policies = policies
        for policy in self.policies:
            policy.on_event(Event.FIT_START, self.state)

    def hooks(self) -> None:
        for policy in self.policies:
            policy.on_event(Event.AFTER_BACKWARD, self.state)
        for policy in self.policies:
            policy.on_event(Event.AFTER_OPTIMIZER_STEP, self.state)

    def step_fn(self, batch: tuple[torch.Tensor, torch.Tensor]) -> Callable[[], None]:
        x, y = batch

        def step() -> None:
            self.optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(self.model(x), y).backward()
            for policy in self.policies:
                policy.on_event(Event.AFTER_BACKWARD, self.state)
            self.optimizer.step()
            self.state.step += 1
            for policy in self.policies:
                policy.on_event(Event.AFTER_OPTIMIZER_STEP, self.state)
            if x.is_cuda:
                torch.cuda.synchronize()
        return step


def median_times(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up
        fn(), fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


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
    variants = {name: Variant(args.arch, device, masks=masks, sparsity=args.sparsity)
                for name, masks in (("dense", None), ("fixed masks", "fixed"), ("recipe masks", "recipe"))}
    steps = median_times({k: v.step_fn(batch) for k, v in variants.items()}, args.steps)
    masked = {k: v for k, v in variants.items() if v.policies}
    for v in masked.values():  # give every held parameter a gradient, as after backward
        for param in v.model.parameters():
            param.grad = torch.randn_like(param)
    hooks = median_times({k: v.hooks for k, v in masked.items()}, 50)
    print(f"{args.arch} batch {args.batch} at {args.size}px on {device}, {len(variants['dense'].masks)} masked "
          f"tensors at {args.sparsity:.0%} sparsity, {args.steps} steps each (median)")
    for name, t in steps.items():
        ratio = "" if name == "dense" else f"   ratio to dense {t / steps['dense']:.3f}  (target <= 1.05)"
        print(f"{name:<13} step {t * 1000:8.1f} ms{ratio}")
    for name, t in hooks.items():
        print(f"{name:<13} mask hooks alone {t * 1000:7.2f} ms per step")


if __name__ == "__main__":
    main()
