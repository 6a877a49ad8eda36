"""The GPU side of the project, measured side by side in one run (bench/gpu_check.sh runs it after the DDP check).

    python bench/gpu_check.py [--steps 20] [--batch 64] [--size 224] [--smoke]

1. ResNet-50 training steps (SGD, cross-entropy over 100 classes) at 90% with the masks held as a sparse-transfer
   recipe holds them, in fp32, `--precision bf16` and `--precision fp16` autocast (timed steps of random data; no
   gradient scaler), each also channels-last: images/s, and after the steps whether every masked weight is still
   exactly zero.
2. 2:4 semi-structured sparsity (the GPU's counterpart of the CPU sparse engine): the Linear layers of a ViT-B/16
   (timm, random weights) pruned 2 of every 4 by magnitude and converted with
   `torch.sparse.to_sparse_semi_structured`, inference at batch `--batch` in fp16 against the same model dense;
   the outputs' agreement and the speedup. Needs an NVIDIA GPU of compute capability 8.0 or more (A100, H100).
Variants alternate inside each round so that clock drift hits all alike. `--smoke` runs tiny sizes on the CPU
(fp32 only, no 2:4) to check the script itself where there is no GPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import emit, hold_sparse_masks, policy_step, sync  # noqa: E402

from models import build_model  # noqa: E402
from policies.base import TrainState  # noqa: E402
from policies.events import Event  # noqa: E402
from policies.tasks import autocast_for  # noqa: E402


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def training_variants(args: argparse.Namespace, device: torch.device) -> None:
    """Images/s of a masked ResNet-50 training step per precision and memory format; the masks checked after."""
    precisions = ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32"]
    runs = {}
    for precision in precisions:
        for channels_last in (False, True):
            torch.manual_seed(0)
            model = build_model("resnet50", num_classes=100).to(device)
            policies = hold_sparse_masks(model, 0.9)
            zeros = {n: p.detach() == 0 for n, p in model.named_parameters()
                     if p.dim() > 1 and not n.startswith(model.classifier_name)}
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            state = TrainState(model=model, forward_model=model, optimizer=optimizer, device=device,
                               steps_per_epoch=10**6, num_epochs=1, seed=0)
            emit(policies, Event.FIT_START, state)
            x = torch.randn(args.batch, 3, args.size, args.size, device=device)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            y = torch.randint(0, 100, (args.batch,), device=device)

            def loss_fn(model=model, x=x, y=y, precision=precision) -> torch.Tensor:
                with autocast_for(device, precision):
                    return F.cross_entropy(model(x), y)

            def one_step(policies=policies, state=state, loss_fn=loss_fn) -> None:
                policy_step(policies, state, loss_fn)

            runs[(precision, channels_last)] = (one_step, model, zeros)
    for fn, _, _ in runs.values():                          # warm-up: cuDNN's algorithm search, allocator
        for _ in range(3):
            fn()
    times: dict[tuple, list[float]] = {key: [] for key in runs}
    for _ in range(args.steps):
        for key, (fn, _, _) in runs.items():
            times[key].append(timed(fn, device))
    base = args.batch / statistics.median(times[("fp32", False)])
    print(f"\nResNet-50 training step, 90% sparse with masks held, batch {args.batch} at {args.size} px "
          f"({device}, median of {args.steps}):")
    for (precision, channels_last), (_, model, zeros) in runs.items():
        rate = args.batch / statistics.median(times[(precision, channels_last)])
        params = dict(model.named_parameters())
        exact = all(torch.equal(params[n].detach() == 0, z) for n, z in zeros.items())
        print(f"  {precision:<5} {'channels-last' if channels_last else 'contiguous':<13} {rate:8.1f} images/s "
              f"({rate / base:4.2f}x fp32)   every masked weight still zero: {exact}")


def semi_structured(args: argparse.Namespace, device: torch.device) -> None:
    """ViT-B/16 inference with its Linear layers 2:4 sparse (torch's semi-structured kernels) against dense."""
    if device.type != "cuda" or torch.cuda.get_device_capability() < (8, 0):
        print("\n2:4 semi-structured: needs an NVIDIA GPU of compute capability 8.0 or more: not run")
        return
    import timm
    from torch.sparse import to_sparse_semi_structured

    torch.manual_seed(0)
    dense = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000).half().to(device).eval()
    sparse = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000).half().to(device).eval()
    sparse.load_state_dict(dense.state_dict())
    layers = 0
    with torch.no_grad():
        for (name, d), s in zip(dense.named_modules(), sparse.modules()):
            if isinstance(d, nn.Linear) and name.startswith("blocks."):
                w = d.weight.detach()
                keep = w.abs().reshape(-1, 4).argsort(dim=1)[:, 2:]          # the 2 largest of every 4
                mask = torch.zeros_like(w).reshape(-1, 4).scatter_(1, keep, 1.0).reshape(w.shape).bool()
                d.weight.mul_(mask)                                           # the dense model: same zeros
                s.weight = nn.Parameter(to_sparse_semi_structured(w * mask), requires_grad=False)
                layers += 1
    x = torch.randn(args.batch, 3, 224, 224, device=device, dtype=torch.half)
    with torch.inference_mode():
        agree = (dense(x).argmax(1) == sparse(x).argmax(1)).float().mean().item()
        for model in (dense, sparse):
            for _ in range(3):
                model(x)
        times = {"dense": [], "2:4": []}
        for _ in range(args.steps):
            times["dense"].append(timed(lambda: dense(x), device))
            times["2:4"].append(timed(lambda: sparse(x), device))
    d, s = statistics.median(times["dense"]), statistics.median(times["2:4"])
    print(f"\nViT-B/16 inference, fp16, batch {args.batch}, {layers} block Linear layers 2:4 sparse "
          f"(torch.sparse.to_sparse_semi_structured): dense {1e3 * d:.1f} ms, 2:4 {1e3 * s:.1f} ms -- "
          f"{d / s:.2f}x; top-1 agreement with the dense model holding the same zeros: {agree:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: check the script, measure nothing")
    args = p.parse_args()
    if args.smoke:
        args.steps, args.batch, args.size = 2, 2, 32
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device here: this check is for a GPU machine (--smoke checks the script on the CPU)")
    else:
        device = torch.device("cuda")
        print(f"{torch.cuda.get_device_name()} (compute capability "
              f"{'.'.join(map(str, torch.cuda.get_device_capability()))}), torch {torch.__version__}")
    training_variants(args, device)
    semi_structured(args, device)


if __name__ == "__main__":
    main()
