"""One-shot magnitude pruning of a checkpoint: `python -m utils.prune IN OUT --sparsity 0.9`."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from torch import nn

from utils.checkpoints import load_checkpoint, save_native_checkpoint
from utils.errors import UserError, exit_on_user_error
from utils.masks import apply_masks_, global_magnitude_masks, global_sparsity, magnitude_mask, prunable_parameters

log = logging.getLogger(__name__)


def magnitude_prune_(model: nn.Module, sparsity: float, *, scope: str = "global") -> dict:
    """Zero the smallest weights of every prunable layer but the classifier; returns the masks."""
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"--sparsity must be in [0, 1), got {sparsity}")
    params = prunable_parameters(model, exclude_prefixes=[model.classifier_name])
    if scope == "global":
        masks = global_magnitude_masks(params, sparsity)
    elif scope == "layer":
        masks = {n: magnitude_mask(p, sparsity) for n, p in params.items()}
    else:
        raise UserError(f"--scope must be 'global' or 'layer', got {scope!r}")
    apply_masks_(params, masks)
    return masks


def prune_checkpoint(src: str | Path, dst: str | Path, *, sparsity: float, scope: str = "global",
                     flavour: str | None = None) -> float:
    """Load any supported checkpoint, prune it, write it in the native format; returns the sparsity."""
    loaded = load_checkpoint(src, flavour=flavour, keep_classifier=True)
    model = loaded.model
    masks = magnitude_prune_(model, sparsity, scope=scope)
    save_native_checkpoint(dst, model, arch=loaded.arch, arch_kwargs=loaded.arch_kwargs, masks=masks,
                           normalization=loaded.normalization, interpolation=loaded.interpolation,
                           extra={"method": "Magnitude", "pruning": {"method": "one-shot magnitude", "scope": scope,
                                                                     "sparsity": sparsity, "source": str(src)}})
    return global_sparsity(prunable_parameters(model, exclude_prefixes=[model.classifier_name]))


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("src", help="checkpoint to prune (any flavour)")
    p.add_argument("dst", help="where to write the pruned checkpoint (native format)")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of weights to remove, e.g. 0.9")
    p.add_argument("--scope", default="global", choices=["global", "layer"], help="one threshold or one per layer")
    p.add_argument("--flavour", help="checkpoint flavour (auto-detected when omitted)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    achieved = prune_checkpoint(args.src, args.dst, sparsity=args.sparsity, scope=args.scope, flavour=args.flavour)
    print(f"wrote {args.dst}: global sparsity {achieved:.4f} (classifier excluded)")


if __name__ == "__main__":
    main()
