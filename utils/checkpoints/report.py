"""What a loaded checkpoint's sparsity is: per layer and overall, and where its masks came from."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSparsity:
    numel: int
    pruned: int  # entries the mask prunes (0 for a layer without a mask)
    zeros: int  # entries exactly zero (>= pruned; the rest are zeros outside the mask)

    @property
    def sparsity(self) -> float:
        return self.pruned / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class SparsityReport:
    per_layer: dict[str, LayerSparsity]  # every conv/linear weight loaded from the file
    mask_source: str  # "zeros", "buffers" or "entry"
    classifier_sparsity: float | None = None  # the file's classifier weight, even when it was dropped

    @property
    def num_params(self) -> int:
        return sum(layer.numel for layer in self.per_layer.values())

    @property
    def num_pruned(self) -> int:
        return sum(layer.pruned for layer in self.per_layer.values())

    @property
    def global_sparsity(self) -> float:
        return self.num_pruned / self.num_params if self.num_params else 0.0

    @property
    def zeros_outside_mask(self) -> int:
        return sum(layer.zeros - layer.pruned for layer in self.per_layer.values())

    def layer_sparsity(self) -> dict[str, float]:
        return {name: layer.sparsity for name, layer in self.per_layer.items()}
