"""An exponential moving average of the weights (YOLOv5's ModelEMA), kept as sparse as the model.

After every optimizer step the average moves toward the model: `ema = d * ema + (1 - d) * model` over every
floating-point entry of the state dict (BatchNorm statistics too), with `d = decay * (1 - exp(-updates /
tau_steps))` so the first steps nearly copy the model. Masked entries are multiplied by the masks the run
holds after that step, so a pruned weight is exactly 0.0 in the average as in the model. The average is what
the loop evaluates and, at the end, what the model becomes (model.pt, export). Quantization-aware training (or
any change of the model's modules) switches it off for the rest of the run, as SparseML's YOLOv5 training did:
from then on the model trains and is evaluated as it is.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Any, Sequence

import torch
from pydantic import Field
from torch import nn

from policies.base import Phase, Policy, TrainState
from policies.masking import MaskPolicy
from utils.config import StrictModel

log = logging.getLogger(__name__)


class EmaConfig(StrictModel):
    """A trainer config's `ema:` section (YOLOv5's defaults)."""

    decay: float = Field(default=0.9999, gt=0, lt=1)
    tau_steps: float = Field(default=2000, gt=0)   # the ramp: d reaches 63% of `decay` after tau_steps updates


def ema_decay(updates: int, cfg: EmaConfig) -> float:
    """The weight of the old average at update number `updates` (1-based)."""
    return cfg.decay * (1 - math.exp(-updates / cfg.tau_steps))


def _structure(model: nn.Module) -> tuple[int, ...]:
    return tuple(id(m) for m in model.modules())


class EmaPolicy(Policy):
    """Averages the weights after each optimizer step; `state.eval_model` is the average while it is on."""
    phase = Phase.AVERAGE

    name = "ema"

    def __init__(self, cfg: EmaConfig, *, mask_policies: Sequence[MaskPolicy] = ()):
        self.cfg = cfg
        self.mask_policies = list(mask_policies)
        self.enabled = True
        self.updates = 0
        self.ema: nn.Module | None = None
        self.saved: dict[str, Any] | None = None

    def on_init(self, state: TrainState) -> None:
        """The masks the average must hold too: every mask policy of the run."""
        self.mask_policies = [p for p in state.context.policies if isinstance(p, MaskPolicy)]

    def on_fit_start(self, state: TrainState) -> None:
        if self.saved is not None:
            self.enabled, self.updates = self.saved["enabled"], self.saved["updates"]
        if not self.enabled:
            return
        self.ema = copy.deepcopy(state.model).eval().requires_grad_(False)
        if self.saved is not None:
            self.ema.load_state_dict(self.saved["ema"])
        self._bind(state.model)
        self._mask_()
        state.eval_model = self.ema

    def _bind(self, model: nn.Module) -> None:
        """The floating-point entries of both state dicts, paired (tensors share the modules' storage)."""
        ours, theirs = self.ema.state_dict(), model.state_dict()
        keys = [k for k, v in ours.items() if v.dtype.is_floating_point]
        self._pairs = ([ours[k] for k in keys], [theirs[k].detach() for k in keys])
        self._masked = {k: ours[k] for k in keys}
        self._structure = _structure(model)

    def _mask_(self) -> None:
        with torch.no_grad():
            for policy in self.mask_policies:
                held = policy.held.masks if policy.held is not None else None
                for name, mask in (held or {}).items():
                    self._masked[name].mul_(mask)

    def on_after_optimizer_step(self, state: TrainState) -> None:
        if not self.enabled:
            return
        if _structure(state.model) != self._structure:
            self.disable(state, why=f"the model's modules changed at step {state.step} (quantization-aware "
                                    "training or layer removal)")
            return
        self.updates += 1
        d = ema_decay(self.updates, self.cfg)
        with torch.no_grad():
            torch._foreach_lerp_(self._pairs[0], self._pairs[1], 1 - d)
        self._mask_()

    def disable(self, state: TrainState, *, why: str) -> None:
        """Stop averaging for good: the model trains and is evaluated as it is from now on."""
        log.info("%s: off from here on: %s", self.name, why)
        self.enabled, self.ema, state.eval_model = False, None, None

    def on_fit_end(self, state: TrainState) -> None:
        if self.enabled:
            state.model.load_state_dict(self.ema.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "updates": self.updates,
                "ema": self.ema.state_dict() if self.enabled and self.ema is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = state or None
