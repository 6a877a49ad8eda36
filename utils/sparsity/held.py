"""Masks bound to live parameters: the one implementation of "a pruned weight stays exactly zero".

Every mechanism that holds a sparsity pattern during training -- fixed masks of a sparse upstream, GMP,
AC/DC, constant pruning -- goes through `HeldMasks`: pruned gradients are zeroed after backward and pruned
weights re-zeroed after each optimizer step, each as one fused multiply over all tensors (float copies of
the masks, made once when the masks change, so the hot path casts nothing).
"""
from __future__ import annotations

from typing import Mapping

import torch

from utils.sparsity.masks import check_masks_match_zeros


class HeldMasks:
    """`masks` (name -> bool, True keeps) over `params` (name -> live parameter); None holds nothing."""

    def __init__(self, params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None):
        self.params = dict(params)
        self.masks: dict[str, torch.Tensor] | None = None
        self._tensors: list[torch.Tensor] = []
        self._factors: list[torch.Tensor] = []
        self.set_(masks)

    def set_(self, masks: Mapping[str, torch.Tensor] | None) -> None:
        """Hold `masks` from now on (None: release) and zero the newly pruned weights."""
        if masks is None:
            self.masks, self._tensors, self._factors = None, [], []
            return
        unknown = sorted(set(masks) - set(self.params))
        assert not unknown, f"masks for parameters that are not held: {unknown[:5]}"
        self.masks = {n: m.to(device=self.params[n].device, dtype=torch.bool) for n, m in masks.items()}
        self._tensors = [self.params[n] for n in self.masks]
        self._factors = [m.to(self.params[n].dtype) for n, m in self.masks.items()]
        self.zero_weights_()

    def zero_grads_(self) -> None:
        """After backward: pruned entries of every gradient become 0 (parameters without a grad are skipped)."""
        if not self._tensors:
            return
        pairs = [(p.grad, f) for p, f in zip(self._tensors, self._factors) if p.grad is not None]
        if pairs:
            grads, factors = zip(*pairs)
            torch._foreach_mul_(list(grads), list(factors))

    def zero_weights_(self) -> None:
        """After an optimizer step (momentum and weight decay move pruned weights): re-zero them."""
        if self._tensors:
            with torch.no_grad():
                torch._foreach_mul_(self._tensors, self._factors)

    def violations(self) -> list[str]:
        """Names of held parameters with a nonzero weight where the mask prunes (should always be empty)."""
        return check_masks_match_zeros(self.params, self.masks) if self.masks else []

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        return None if self.masks is None else {n: m.cpu() for n, m in self.masks.items()}
