"""One-shot magnitude pruning of a checkpoint file (any flavour in, the native format out)."""
from __future__ import annotations

from pathlib import Path

from utils.checkpoints.load import load_checkpoint
from utils.checkpoints.native import save_native_checkpoint
from utils.sparsity import magnitude_prune_, measured_sparsity


def prune_checkpoint(src: str | Path, dst: str | Path, *, sparsity: float, scope: str = "global",
                     flavour: str | None = None, arch: str | None = None) -> float:
    """Load `src`, zero its smallest backbone weights, write `dst`; returns the sparsity reached."""
    loaded = load_checkpoint(src, flavour=flavour, keep_classifier=True, arch=arch)
    model = loaded.model
    masks = magnitude_prune_(model, sparsity, scope=scope)
    save_native_checkpoint(dst, model, arch=loaded.arch, arch_kwargs=loaded.arch_kwargs, masks=masks,
                           normalization=loaded.normalization, interpolation=loaded.interpolation,
                           extra={"method": "Magnitude", "pruning": {"method": "one-shot magnitude", "scope": scope,
                                                                     "sparsity": sparsity, "source": str(src)}})
    return measured_sparsity(model)
