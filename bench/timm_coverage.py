"""Which of timm's model families go through this project's protocol: build, load from a Hugging Face folder,
prune with a recipe, fine-tune a step keeping the masks, export to ONNX with the agreement check.

    python bench/timm_coverage.py [--families convnext vision_transformer ...] [--out coverage.csv]

One model per family (timm's modules, e.g. `convnext`, `vision_transformer`): the one with the fewest parameters
among the family's names that hint at a small size (tiny, small, nano, b0, ...), counted on the meta device.
Random weights, nothing downloads. Stages, each only after the one before passed:

  build    `build_model("timm:NAME", num_classes=10)`: the project's interface (classifier, pooled features)
  load     written with timm's `save_for_hf` (config.json + model.safetensors; pytorch_model.bin for models with
           tied weights, which safetensors refuses), read back by `load_checkpoint`: the same logits
  prune    SparseML's GMPruningModifier at 50% on `__ALL_PRUNABLE__` through `RecipeManager` in a training step
  step     a second SGD step: every pruned weight still zero
  export   fp32 ONNX, ONNX Runtime's logits against torch's: top-1 agreement 1.0 and max |diff| under 1e-4 of the
           largest logit (random weights give logits of any magnitude)

Prints a table per family (the stage it stopped at and why) and the totals; `--out` writes it as CSV.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models import build_model  # noqa: E402
from policies.recipe.manager import RecipeManager  # noqa: E402
from utils.checkpoints import load_checkpoint  # noqa: E402
from utils.deploy import compare_with_torch, export_onnx  # noqa: E402
from utils.sparsity import prunable_parameters  # noqa: E402

SMALL_HINTS = ("atto", "femto", "pico", "nano", "tiny", "xxs", "xs", "small", "mini", "b0", "s0", "t0", "_s_",
               "18", "lite", "050", "075", "100")
STAGES = ("build", "load", "prune", "step", "export")
RECIPE = """
pruning_modifiers:
  - !GMPruningModifier
    init_sparsity: 0.5
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: 1
    update_frequency: 1
    params: __ALL_PRUNABLE__
"""


def smallest(timm, family: str, *, tries: int = 6) -> str:
    """The family's name with the fewest parameters among those hinting at a small size (else its first)."""
    names = timm.list_models(module=family)
    hinted = [n for n in names if any(h in n for h in SMALL_HINTS)] or names
    counts = {}
    for name in hinted[:tries]:
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
            counts[name] = sum(p.numel() for p in model.parameters())
        except Exception:  # noqa: BLE001 -- a name that does not build on meta is simply not chosen
            continue
    return min(counts, key=counts.get) if counts else hinted[0]


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def run_family(name: str, workdir: Path) -> tuple[str, str]:
    """(last stage passed, why it stopped: '' when every stage passed)."""
    from timm.models import save_for_hf

    passed = ""
    try:
        torch.manual_seed(0)
        model = build_model(f"timm:{name}", num_classes=10).eval()
        size = model.default_input_size
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            reference = logits(model, x)
        assert model.pooled_features(x).shape[-1] == model.feature_dim, "pooled width != feature_dim"
        passed = "build"
        try:
            save_for_hf(model, workdir / "hf", safe_serialization=True)
        except RuntimeError as err:       # tied weights: safetensors refuses shared tensors; timm then writes .bin
            if "share memory" not in str(err):
                raise
            save_for_hf(model, workdir / "hf", safe_serialization=False)
        loaded = load_checkpoint(workdir / "hf", keep_classifier=True).model.eval()
        with torch.no_grad():
            assert torch.allclose(logits(loaded, x), reference, atol=1e-4, rtol=1e-4), "reloaded logits differ"
        passed = "load"
        model.train()
        manager = RecipeManager.from_yaml(RECIPE)
        optimizer = manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.01), steps_per_epoch=2)
        target = torch.randint(0, 10, (2,))
        zeros = {}
        for step in range(2):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(logits(model, x), target).backward()
            optimizer.step()
            params = prunable_parameters(model)
            if step == 0:
                zeros = {n: p.detach() == 0 for n, p in params.items()}
                share = sum(int(z.sum()) for z in zeros.values()) / sum(z.numel() for z in zeros.values())
                assert 0.45 < share < 0.6, f"pruned {share:.2f} of the prunable weights, not 0.5"
                passed = "prune"
        held = all(bool((params[n].detach()[z] == 0).all()) for n, z in zeros.items())
        assert held, "a pruned weight moved"
        manager.finalize(model)
        passed = "step"
        model.eval()
        path = export_onnx(model, workdir / "model.onnx", input_size=size)
        check = compare_with_torch(model, path, x)
        with torch.no_grad():
            scale = float(logits(model, x).abs().max()) or 1.0     # random weights: logits of any magnitude
        relative = check["max_abs_diff"] / scale
        assert check["top1_agreement"] == 1.0 and relative < 1e-4, f"ONNX disagrees: {check}, relative {relative:.1e}"
        passed = "export"
        return passed, ""
    except Exception as err:  # noqa: BLE001 -- the table reports every failure, one line each
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:140]
        where = traceback.extract_tb(err.__traceback__)[-1]
        return passed, f"{type(err).__name__}: {first} ({Path(where.filename).name}:{where.lineno})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", help="timm modules to try (default: all of timm.list_modules())")
    p.add_argument("--out", help="write the table as CSV")
    args = p.parse_args()
    import timm

    torch.set_num_threads(max(1, torch.get_num_threads()))
    families = args.families or timm.list_modules()
    rows = []
    for family in families:
        start = time.perf_counter()
        name = smallest(timm, family)
        with tempfile.TemporaryDirectory() as tmp:
            passed, why = run_family(name, Path(tmp))
        rows.append({"family": family, "model": name, "passed": passed or "-", "stopped": why,
                     "seconds": round(time.perf_counter() - start, 1)})
        print(f"{family:<24} {name:<40} {passed or '-':<7} {why}", flush=True)
    print(f"\ntimm {timm.__version__}: {len(rows)} families")
    for stage in STAGES:
        reached = sum(1 for r in rows if r["passed"] != "-" and STAGES.index(r["passed"]) >= STAGES.index(stage))
        print(f"  {stage:<7} {reached:>3} / {len(rows)}")
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
