"""What the benches share: sparsify a model by magnitude and hold its masks the way recipes do; the machine's
measured matmul throughput (the limit each bench compares with)."""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from policies.base import Policy, TrainState
from policies.events import Event
from policies.modifiers import build_recipe_policies
from policies.recipe.load import load_recipe_text
from utils.sparsity import magnitude_mask, prunable_parameters

# A recipe holding every prunable weight's zeros: the policy every pruning modifier shares.
HOLD = """
modifiers:
  - !EpochRangeModifier
    end_epoch: 1
  - !ConstantPruningModifier
    params: __ALL_PRUNABLE__
"""


def hold_sparse_masks(model: nn.Module, sparsity: float) -> list[Policy]:
    """Zero each prunable weight (classifier excluded) to `sparsity` by magnitude; the recipe policies that hold it."""
    with torch.no_grad():
        for w in prunable_parameters(model, exclude_prefixes=[model.classifier_name]).values():
            w.mul_(magnitude_mask(w, sparsity))
    return build_recipe_policies(load_recipe_text(HOLD, source="bench"), model=model, steps_per_epoch=10**6)[0]


def emit(policies: list[Policy], event: Event, state: TrainState) -> None:
    for policy in policies:
        policy.on_event(event, state)


def policy_step(policies: list[Policy], state: TrainState, loss_fn: Callable[[], torch.Tensor]) -> None:
    """One training step as the Manager runs it: the policies' batch events around backward and the optimizer step
    (the masks' cost is what they do at AFTER_BACKWARD and AFTER_OPTIMIZER_STEP)."""
    emit(policies, Event.BATCH_START, state)
    loss = loss_fn()
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    emit(policies, Event.AFTER_BACKWARD, state)
    state.optimizer.step()
    state.step += 1
    emit(policies, Event.AFTER_OPTIMIZER_STEP, state)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32, n: int = 2048,
                  reps: int = 5) -> float:
    """The machine's measured matmul throughput in GFLOP/s: an n x n matmul with all of torch's threads, the best
    of `reps` calls (the closest to the limit; a busy moment only slows some calls)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9
