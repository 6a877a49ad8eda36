"""Second-order pruning: OBS (oBERT / WoodFisher style) and M-FAC, the methods the study compares with magnitude.

Both follow GMP's schedule (`GMPruningModifier`); at each mask update they estimate the inverse of the
empirical Fisher `F = damp * I + (1/m) * sum g g^T` block by block along the diagonal (blocks of
`fisher_block_size` weights) from `m = num_grads` loss gradients, score each weight by the loss increase
of removing it, `w^2 / (2 [F^-1]_ii)`, prune the lowest scores to the target sparsity, and move the
remaining weights to compensate (`w -= F^-1 (w_pruned / diag(F^-1))`, the Optimal Brain Surgeon update
applied for every newly pruned weight).

- OBS (SparseML's `OBSPruningModifier`) takes the gradients on fresh mini-batches of the training data in
  eval mode (`grad_sampler_kwargs: {batch_size: N}`; default: the run's batch size), blocks over each
  parameter, `num_recomputations` rounds per update, global scope by default.
- M-FAC (SparseML's `MFACPruningModifier`) blocks over the concatenated unpruned weights of all its
  parameters, per-layer scope by default. Its gradients are sampled as OBS's are (what SparseML does when
  the training script gives it a grad sampler, as SparseML's own scripts do), or with
  `use_gradient_buffering: true` taken from the last `num_grads` training steps. SparseML computes the same
  inverse with the M-FAC recursion; here it is the same matrix by rank-one Woodbury updates.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any, Iterator

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader

from policies.base import TrainState
from policies.modifiers.base import MODIFIERS
from policies.modifiers.pruning import GMPArgs, GMPruningModifier, interpolate
from policies.tasks import ClassificationTask
from utils.errors import UserError
from utils.sparsity import make_masks

log = logging.getLogger(__name__)
EPS = torch.finfo(torch.float32).eps


class BlockFisherInverse:
    """Inverse of `damp * I + (1/m) sum g g^T` restricted to diagonal blocks, by rank-one Woodbury updates."""

    def __init__(self, *, num_grads: int, block: int, size: int, damp: float, device: torch.device):
        self.m, self.block, self.size = num_grads, block, size
        self.num_blocks = math.ceil(size / block)
        self.f_inv = (torch.eye(block, device=device) / damp).unsqueeze(0).repeat(self.num_blocks, 1, 1)

    def _blocks(self, v: torch.Tensor) -> torch.Tensor:
        pad = self.num_blocks * self.block - v.numel()
        return (torch.cat([v, v.new_zeros(pad)]) if pad else v).reshape(self.num_blocks, self.block)

    def add_grad(self, g: torch.Tensor) -> None:
        g = self._blocks(g.float())
        finv_g = torch.einsum("bij,bj->bi", self.f_inv, g)
        alpha = (self.m + torch.einsum("bi,bi->b", g, finv_g)).sqrt().unsqueeze(1)
        finv_g = finv_g / alpha
        self.f_inv.baddbmm_(finv_g.unsqueeze(2), finv_g.unsqueeze(1), alpha=-1)

    def diag(self) -> torch.Tensor:
        return self.f_inv.diagonal(dim1=1, dim2=2).flatten()[:self.size]

    def mul(self, v: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.f_inv, self._blocks(v.float()).unsqueeze(2)).flatten()[:self.size]


class SecondOrderArgs(GMPArgs):
    global_sparsity: bool = True
    num_grads: int = Field(default=1024, gt=0)
    damp: float = Field(default=1e-7, gt=0)
    fisher_block_size: int = Field(default=1, gt=0)
    grad_sampler_kwargs: dict[str, Any] | None = None
    num_recomputations: int = Field(default=1, gt=0)


@MODIFIERS.register("OBSPruningModifier")
class OBSPruningModifier(GMPruningModifier):
    """Optimal Brain Surgeon pruning on GMP's schedule; see the module docstring."""

    Args = SecondOrderArgs
    method = "OBS"

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        if self.mask_type.kind != "unstructured":
            raise UserError(f"{self.source}: {type(self).__name__} supports mask_type unstructured only here")
        self.last_target: Any = 0.0

    def sample_gradients(self, state: TrainState) -> Iterator[dict[str, torch.Tensor]]:
        """`num_grads` loss gradients of the held parameters on fresh training mini-batches, in eval mode
        (SparseML's grad sampler; `grad_sampler_kwargs: {batch_size: N}`, default the run's batch size)."""
        loader, model, params = state.train_loader, state.model, self.held_params
        if loader is None:
            raise UserError(f"{self.source}: second-order pruning needs the training data (run it through main.py)")
        batch_size = (self.args.grad_sampler_kwargs or {}).get("batch_size", loader.batch_size)
        sampler = DataLoader(loader.dataset, batch_size=batch_size, shuffle=True, collate_fn=loader.collate_fn,
                             generator=torch.Generator().manual_seed(state.seed * 7919 + state.step))
        task = state.task or ClassificationTask()
        was_training, seen = model.training, 0
        model.eval()
        try:
            while seen < self.args.num_grads:
                for inputs, targets in sampler:
                    model.zero_grad(set_to_none=True)
                    inputs, targets = task.to_device(inputs, targets, state.device)
                    task.loss(model(inputs), targets).backward()
                    yield {n: p.grad.detach().reshape(-1).float() for n, p in params.items()}
                    seen += 1
                    if seen >= self.args.num_grads:
                        break
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)

    def fisher_inverses(self, state: TrainState) -> dict[str, BlockFisherInverse]:
        """One inverse per parameter, from `num_grads` sampled gradients (pruned entries zeroed)."""
        a, params = self.args, self.held_params
        finvs = {n: BlockFisherInverse(num_grads=a.num_grads, block=a.fisher_block_size, size=p.numel(),
                                       damp=a.damp, device=p.device) for n, p in params.items()}
        for grads in self.sample_gradients(state):
            for n, g in grads.items():
                finvs[n].add_grad(g if self.masks is None else g * self.masks[n].reshape(-1))
        return finvs

    def compute_masks(self, step: int, state: TrainState):
        target, rounds = self.sparsity_at(step), self.args.num_recomputations
        masks = self.masks
        for i in range(1, rounds + 1):
            finvs = self.fisher_inverses(state)
            goal = self._between(self.last_target, target, i / rounds)
            masks = self._prune(finvs, goal, masks)
        self.last_target = target
        return masks

    @staticmethod
    def _between(last: Any, target: Any, fraction: float) -> Any:
        if isinstance(target, dict):
            return {n: interpolate(fraction, 0, 1, last[n] if isinstance(last, dict) else last, t, "linear")
                    for n, t in target.items()}
        return interpolate(fraction, 0, 1, last, target, "linear")

    @torch.no_grad()
    def _prune(self, finvs: dict[str, BlockFisherInverse], target: Any, masks: dict | None) -> dict:
        params = self.held_params
        scores = {}
        for n, p in params.items():
            score = (p.detach().reshape(-1).float() ** 2 / (2.0 * finvs[n].diag() + EPS)).reshape(p.shape)
            scores[n] = score if masks is None else score * masks[n]     # pruned ones stay pruned
        try:
            new = make_masks(scores, target, mask_type=self.mask_type, global_scope=self.global_scope)
        except ValueError as err:
            raise UserError(f"{self.source}: {err}") from None
        newly = {n: ~(new[n] if masks is None else new[n] | ~masks[n]) for n in params}
        vectors = {n: (p.reshape(-1).float() * newly[n].reshape(-1)) / (finvs[n].diag() + EPS)
                   for n, p in params.items()}
        for n, update in self.obs_updates(finvs, vectors).items():
            p = params[n]
            p.sub_(update.reshape(p.shape).to(p.dtype))
            p[newly[n]] = 0.0
        return new

    @staticmethod
    def obs_updates(finvs: dict[str, BlockFisherInverse], vectors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """F^-1 times each parameter's vector (the inverses are per parameter here)."""
        return {n: finvs[n].mul(v) for n, v in vectors.items()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_target": self.last_target}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state:
            self.last_target = state.get("last_target", 0.0)


@MODIFIERS.register("MFACPruningModifier")
class MFACPruningModifier(OBSPruningModifier):
    """M-FAC pruning on GMP's schedule: gradients of the last `num_grads` training steps; see the docstring."""

    method = "M-FAC"

    class Args(SecondOrderArgs):
        global_sparsity: bool = False
        num_grads: int | dict[float, int] = 64
        damp: float = Field(default=1e-5, gt=0)
        fisher_block_size: int | None = 2000
        use_gradient_buffering: bool | None = None
        grads_device: str | int = "cpu"                 # accepted; gradients stay on the training device
        num_pages: int = 1                               # accepted; the exact block inverse needs no paging
        available_devices: list[str] | None = None       # accepted
        num_recomputations: int = Field(default=1, ge=1, le=1)

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        if isinstance(self.args.num_grads, dict):
            raise UserError(f"{self.source}: num_grads per sparsity level is not supported here; give one number")
        self.buffer: deque[torch.Tensor] = deque(maxlen=self.args.num_grads)

    def on_after_backward(self, state: TrainState) -> None:
        """With `use_gradient_buffering: true`, keep the latest training gradients (before the masks zero them).
        The buffer is not checkpointed: a run resumed inside the window before an update samples instead."""
        if self.args.use_gradient_buffering and any(
                self.is_update(s) for s in range(state.step + 1, state.step + 1 + self.args.num_grads)):
            grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
                     for p in self.held_params.values()]
            self.buffer.append(torch.cat(grads).detach().float().clone())
        super().on_after_backward(state)

    def fisher_inverses(self, state: TrainState) -> dict[str, BlockFisherInverse]:
        """One inverse over the concatenated unpruned weights, presented per parameter: from the buffered
        training gradients, or (SparseML's default with a grad sampler) from sampled ones."""
        params = self.held_params
        keep = torch.cat([(self.masks[n] if self.masks is not None else torch.ones_like(p, dtype=torch.bool))
                          .reshape(-1) for n, p in params.items()])
        grads = list(self.buffer) if self.buffer else \
            [torch.cat(list(g.values())) for g in self.sample_gradients(state)]
        size = int(keep.sum())
        finv = BlockFisherInverse(num_grads=len(grads), block=self.args.fisher_block_size or size, size=size,
                                  damp=self.args.damp, device=keep.device)
        for g in grads:
            finv.add_grad(g[keep])
        self.buffer.clear()
        return split_inverse(finv, keep, params)

    @staticmethod
    def obs_updates(finvs: dict[str, BlockFisherInverse], vectors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One product with the inverse over all parameters (its blocks span parameter boundaries)."""
        parts = [finvs[n] for n in vectors]
        if not all(isinstance(f, _Restricted) for f in parts):
            return OBSPruningModifier.obs_updates(finvs, vectors)
        whole, combined = parts[0].whole, sum(finvs[n].embed(v) for n, v in vectors.items())
        product = whole.mul(combined)
        return {n: finvs[n].extract(product, 0.0) for n in vectors}


class _Restricted(BlockFisherInverse):
    """A parameter's view of an inverse over the concatenated unpruned weights of several parameters."""

    def __init__(self, whole: BlockFisherInverse, keep: torch.Tensor, offset: int, numel: int):
        self.whole, self.keep, self.offset, self.numel = whole, keep, offset, numel

    def embed(self, v: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(self.keep.numel(), device=v.device)
        full[self.offset:self.offset + self.numel] = v
        return full[self.keep]

    def extract(self, compact: torch.Tensor, fill: float) -> torch.Tensor:
        full = torch.full((self.keep.numel(),), fill, device=compact.device)
        full[self.keep] = compact
        return full[self.offset:self.offset + self.numel]

    def diag(self) -> torch.Tensor:
        return self.extract(self.whole.diag(), 1.0)

    def mul(self, v: torch.Tensor) -> torch.Tensor:
        return self.extract(self.whole.mul(self.embed(v.float())), 0.0)


def split_inverse(whole: BlockFisherInverse, keep: torch.Tensor,
                  params: dict[str, torch.Tensor]) -> dict[str, BlockFisherInverse]:
    out, offset = {}, 0
    for n, p in params.items():
        out[n] = _Restricted(whole, keep, offset, p.numel())
        offset += p.numel()
    return out
