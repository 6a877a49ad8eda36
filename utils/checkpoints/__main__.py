"""Inspect a checkpoint file: `python -m utils.checkpoints PATH [--checkpoint_flavour NAME]` (`--list`: flavours).

With `--prune OUT --sparsity S` it also writes a one-shot magnitude-pruned copy in the native format; with
`--convert OUT` a copy of a file that names classes (refused as it is) with only its tensors and plain data, read
without importing or running anything it names.
"""
from __future__ import annotations

import argparse

from utils.checkpoints import FLAVOURS, LoadedCheckpoint, load_checkpoint, prune_checkpoint
from utils.checkpoints.files import convert_checkpoint
from utils.checkpoints.load import DENSE_LABEL, SPARSE_DENSE_FILE
from utils.cli import setup_logging
from utils.errors import exit_on_user_error


def format_report(loaded: LoadedCheckpoint) -> str:
    """Human-readable summary: flavour, architecture, per-layer and global sparsity."""
    r, f = loaded.report, loaded.flavour
    lines = [
        f"file:          {loaded.source_path}",
        f"flavour:       {f.name}{' (auto-detected)' if loaded.detected else ''}"
        f"{f' -- method {f.method}' if f.method else ''}",
        f"architecture:  {loaded.arch} {loaded.arch_kwargs or ''}".rstrip() + f", {loaded.num_classes} classes",
        f"input:         {loaded.input_size}px, {loaded.interpolation} resize, normalization {loaded.normalization}",
        f"masks from:    {r.mask_source}",
        *([f"recipe:        carried in the file ({len(loaded.recipe.splitlines())} lines); main.py --recipe checkpoint "
           "runs it"] if loaded.recipe else []),
        "",
        f"{'layer':<40} {'shape':<20} {'params':>10} {'sparsity':>9} {'zeros outside mask':>19}",
    ]
    params = dict(loaded.model.named_parameters())
    for name, layer in r.per_layer.items():
        shape = "x".join(map(str, params[name].shape))
        lines.append(f"{name:<40} {shape:<20} {layer.numel:>10} {layer.sparsity:>9.4f} "
                     f"{layer.zeros - layer.pruned:>19}")
    lines += ["", f"global sparsity: {r.global_sparsity:.4f} "
                  f"({r.num_pruned} of {r.num_params} conv/linear weights pruned)",
              f"zeros outside the mask: {r.zeros_outside_mask}"]
    if loaded.method == DENSE_LABEL and r.global_sparsity > SPARSE_DENSE_FILE:
        lines.append(f"note: the flavour labels it {DENSE_LABEL!r} in results; name its method with --model_label "
                     "(a study: the upstream's `model`)")
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.checkpoints", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", help="checkpoint file (or timm / Hugging Face model folder) to inspect")
    parser.add_argument("--arch", help="the architecture of a plain state dict or safetensors file without config.json "
                                       "(timm:NAME, tv:NAME, or one of `python main.py --list-archs`)")
    parser.add_argument("--checkpoint_flavour", "--flavour", dest="flavour",
                        help="flavour name or YAML path (default: auto-detect)")
    parser.add_argument("--list", action="store_true", help="list the registered flavours and exit")
    parser.add_argument("--prune", metavar="OUT", help="write a one-shot magnitude-pruned copy to OUT (native format)")
    parser.add_argument("--sparsity", type=float, help="with --prune: fraction of backbone weights to remove, e.g. 0.9")
    parser.add_argument("--scope", default="global", choices=["global", "layer"],
                        help="with --prune: one magnitude threshold for all layers, or one per layer")
    parser.add_argument("--convert", metavar="OUT", help="write the file's tensors and plain data to OUT, reading the "
                        "classes it names as inert stand-ins (for files refused for the classes they name)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.list or not args.path:
        for name in FLAVOURS.names():
            f = FLAVOURS.get(name)
            print(f"{name:<22} {f.method or '-':<11} {f.arch or '(in file)':<10} {f.description[:70]}...")
        return
    if args.convert:
        names = convert_checkpoint(args.path, args.convert)
        print(f"wrote {args.convert}: tensors and plain data of {args.path}" +
              (f" (dropped as stand-ins: {', '.join(names[:5])})" if names else ""))
        return
    if args.prune:
        if args.sparsity is None:
            parser.error("--prune needs --sparsity")
        achieved = prune_checkpoint(args.path, args.prune, sparsity=args.sparsity, scope=args.scope,
                                    flavour=args.flavour, arch=args.arch)
        print(f"wrote {args.prune}: global sparsity {achieved:.4f} (classifier excluded)")
        return
    print(format_report(load_checkpoint(args.path, flavour=args.flavour, keep_classifier=True, arch=args.arch)))


if __name__ == "__main__":
    main()
