"""Layer pruning: whole layers bypassed, as SparseML's LayerPruningModifier replaces them with identity.

From start_epoch the named modules (our names, or SparseML's aliases) pass their input through unchanged
(they must keep its shape, e.g. a non-downsampling residual block) and their parameters get no gradient;
at end_epoch (-1: never) they come back. Their tensors stay in the state dict, so checkpoints keep the
architecture's keys; a model saved with layers pruned records them (the native checkpoint's
`extra.removed_layers`) and loading it replaces them with `nn.Identity`.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from policies.base import TrainState
from policies.modifiers.base import MODIFIERS, Modifier, ModifierArgs
from policies.modifiers.params import resolve_submodules
from utils.errors import UserError


def _pass_input(module: nn.Module, args: tuple, output: Any) -> Any:
    return args[0]


@MODIFIERS.register("LayerPruningModifier")
class LayerPruningModifier(Modifier):
    """See the module docstring."""

    method = "Layer pruning"

    class Args(ModifierArgs):
        layers: str | list[str]
        update_frequency: float = -1.0

    def setup(self, model: nn.Module) -> None:
        layers = [self.args.layers] if isinstance(self.args.layers, str) else list(self.args.layers)
        self.layer_names = resolve_submodules(model, layers, source=self.source)
        if "" in self.layer_names:
            raise UserError(f"{self.source}: layers must name modules inside the model")
        self.hooks: dict[str, Any] = {}

    @property
    def removed(self) -> list[str]:
        """The layers bypassed right now."""
        return list(self.hooks)

    def facts(self) -> dict[str, Any]:
        return {"removed_layers": [*self.removed]} if self.removed else {}

    def removed_at(self, step: int) -> bool:
        return step >= self.start_step and (self.end_step is None or step < self.end_step)

    def _update(self, state: TrainState) -> None:
        remove = self.removed_at(state.step)
        if remove and not self.hooks:
            self.hooks = {n: state.model.get_submodule(n).register_forward_hook(_pass_input)
                          for n in self.layer_names}
        elif not remove and self.hooks:
            for handle in self.hooks.values():
                handle.remove()
            self.hooks = {}

    def on_fit_start(self, state: TrainState) -> None:
        self._update(state)

    def on_batch_start(self, state: TrainState) -> None:
        self._update(state)
