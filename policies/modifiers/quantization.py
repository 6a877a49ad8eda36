"""QuantizationModifier: quantization-aware training from start_epoch (see policies/qat/modules.py).

At start_epoch the chosen Conv2d/Linear modules (under `submodules`, minus `ignore`) become QAT modules
with conv-bn folded; at disable_quantization_observer_epoch the observers freeze the quantization parameters;
at freeze_bn_stats_epoch the folded BatchNorms switch to their running statistics. Each switch happens at the
first optimizer step at or after its epoch. The QAT parameters travel in this policy's state.
"""
from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field
from torch import nn

from policies.base import TrainState
from policies.modifiers.base import MODIFIERS, Modifier, ModifierArgs
from policies.modifiers.params import resolve_submodules
from policies.qat.modules import (
    QuantScheme,
    freeze_bn_stats_,
    load_qat_state_,
    prepare_qat_,
    qat_state,
    quantizable_modules,
    set_observers_,
)
from utils.errors import UserError

log = logging.getLogger(__name__)


@MODIFIERS.register("QuantizationModifier")
class QuantizationModifier(Modifier):
    """Fake-quantize weights (int8, symmetric, per tensor as SparseML's default; `per_channel_weights: true`
    for per output channel) and activations (uint8 per tensor) from start_epoch. `quantize_conv_activations:
    false` drops the conv outputs' fake-quantizers; a Linear's output (the logits) is never quantized, which is
    SparseML's `quantize_linear_activations: false` (true is accepted and means the same here)."""

    class Args(ModifierArgs):
        submodules: list[str] | None = None
        ignore: list[str] = Field(default_factory=list)
        exclude_module_types: list[str] = Field(default_factory=list)
        disable_quantization_observer_epoch: float | None = None
        freeze_bn_stats_epoch: float | None = None
        model_fuse_fn_name: str | None = None        # accepted for SparseML recipes; conv-bn is always fused
        activation_bits: Literal[8] = 8
        weight_bits: Literal[8] = 8
        quantize_conv_activations: bool = True
        quantize_linear_activations: bool = True
        per_channel_weights: bool = False             # this project's option: per output channel weight scales

    def setup(self, model: nn.Module) -> None:
        a = self.args
        if a.end_epoch >= 0:
            raise UserError(f"{self.source}: QuantizationModifier end_epoch must be -1 (quantization stays on)")
        roots = resolve_submodules(model, a.submodules, source=self.source)
        ignore = list(a.ignore) + list(a.exclude_module_types)
        if a.ignore:
            ignore += resolve_submodules(model, [i for i in a.ignore if "." in i or hasattr(model, i)],
                                         source=self.source)
        self.module_names = quantizable_modules(model, submodules=roots, ignore=ignore)
        if not self.module_names:
            raise UserError(f"{self.source}: no Conv2d/Linear modules to quantize under submodules {a.submodules}")
        self.observer_step = (None if a.disable_quantization_observer_epoch is None
                              else self.to_step(a.disable_quantization_observer_epoch))
        self.bn_step = None if a.freeze_bn_stats_epoch is None else self.to_step(a.freeze_bn_stats_epoch)
        self.scheme = QuantScheme(per_channel_weights=a.per_channel_weights,
                                  quantize_conv_outputs=a.quantize_conv_activations)
        self.prepared = False
        self.saved: dict[str, Any] | None = None
        self.model: nn.Module | None = None

    def phase_at(self, step: int) -> dict[str, bool]:
        """What the schedule says at `step`: quantizing, observers frozen, BN statistics frozen."""
        on = step >= self.start_step
        return {"quantize": on,
                "observers_frozen": on and self.observer_step is not None and step >= self.observer_step,
                "bn_frozen": on and self.bn_step is not None and step >= self.bn_step}

    def on_fit_start(self, state: TrainState) -> None:
        self.model = state.model
        if self.saved:
            load_qat_state_(state.model, self.saved)
            state.model.to(state.device)
            self.prepared = True
        self._update(state)

    def on_batch_start(self, state: TrainState) -> None:
        self._update(state)

    def _update(self, state: TrainState) -> None:
        phase = self.phase_at(state.step)
        if phase["quantize"] and not self.prepared:
            prepare_qat_(state.model, self.module_names, self.scheme)
            state.model.to(state.device)
            self.prepared = True
            log.info("%s: quantization-aware training of %d modules from step %d", self.name,
                     len(self.module_names), state.step)
        if self.prepared:
            set_observers_(state.model, not phase["observers_frozen"])
            freeze_bn_stats_(state.model, phase["bn_frozen"])

    def state_dict(self) -> dict[str, Any]:
        return {"qat": qat_state(self.model) if self.prepared and self.model is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = (state or {}).get("qat")

