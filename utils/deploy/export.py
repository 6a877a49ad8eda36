"""One checkpoint -> everything a deployment needs: ONNX (fp32, and INT8 QDQ for quantization-aware-trained
models), each checked against the torch model in ONNX Runtime, and the compressed (bitmask + nonzeros) size."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from policies.qat.modules import load_qat_state_, qat_modules
from utils.checkpoints import load_checkpoint
from utils.deploy.compress import compressed_size_report
from utils.deploy.onnx import compare_with_torch, export_onnx
from utils.io import atomic_write_json
from utils.onnx.engines import available_engines, engines_latency_ms
from utils.tasks import task


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, flavour: str | None = None,
                      image_size: int | None = None, num_samples: int = 64, seed: int = 0,
                      inputs: torch.Tensor | None = None, engines: list[str] | None = None) -> dict[str, Any]:
    """fp32 ONNX (+ INT8 QDQ ONNX when the checkpoint was quantization-aware trained), checks, sizes.

    `inputs` (N, 3, H, W) are the sample inputs compared on (default: `num_samples` seeded N(0, 1) images,
    which matches normalised data). Each file is checked in ONNX Runtime (its numbers are the entry's own) and
    in every other engine of `engines` (default: all that are installed; under the entry's "engines")."""
    engines = available_engines() if engines is None else engines
    out_dir = Path(out_dir)
    loaded = load_checkpoint(checkpoint, flavour=flavour, keep_classifier=True)
    model, quant = loaded.model.eval(), loaded.extra.get("quantization")
    size = image_size or (inputs.shape[-1] if inputs is not None else loaded.input_size)   # the trained size
    if inputs is None:     # detectors take [0, 1] pixels; classifiers normalised ones
        inputs = task(model=model).sample_inputs(num_samples, size, seed=seed)
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "input_size": size}
    fp32 = export_onnx(model, out_dir / "model_fp32.onnx", input_size=size)
    report["fp32"] = {"path": str(fp32), "bytes": fp32.stat().st_size,
                      **compare_in_engines(model, fp32, inputs, engines=engines)}
    if quant and quant.get("modules"):
        load_qat_state_(model, quant)
        int8 = export_onnx(model, out_dir / "model_int8.onnx", input_size=size)
        report["int8"] = {"path": str(int8), "bytes": int8.stat().st_size, "quantized_modules": len(qat_modules(model)),
                          **compare_in_engines(model, int8, inputs, engines=engines)}
    report["size"] = compressed_size_report(model.state_dict(), out_dir / "model_compressed.pt")
    return report


def compare_in_engines(model: torch.nn.Module, path: Path, inputs: torch.Tensor, *,
                       engines: list[str]) -> dict[str, Any]:
    """ONNX Runtime's comparison with torch, and each other engine's under "engines"."""
    result: dict[str, Any] = dict(compare_with_torch(model, path, inputs))
    others = {name: compare_with_torch(model, path, inputs, engine=name) for name in engines if name != "onnxruntime"}
    if others:
        result["engines"] = others
    return result


def deploy_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, latency: bool = False,
                      engines: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """`export_checkpoint` (with `options`), plus the ONNX files' latency at batch 1 in every installed engine (or
    `engines`) when asked (`add_latency_`); the report is written to OUT_DIR/export_report.json."""
    out_dir = Path(out_dir)
    report = export_checkpoint(checkpoint, out_dir, engines=engines, **options)
    if latency:
        add_latency_(report, engines=engines)
    atomic_write_json(out_dir / "export_report.json", report)
    return report


def add_latency_(report: dict[str, Any], *, engines: list[str] | None = None) -> dict[str, Any]:
    """Time an export report's ONNX files at batch 1 in every installed engine (or `engines`), taking turns; adds
    "engine_latency_ms", "engine_precision", ONNX Runtime's numbers as "latency_ms" (ONNX Runtime is always timed:
    it is the reference) and, for the sparse engine, "sparse_layers" (how many layers it runs sparse)."""
    files = {kind: report[kind]["path"] for kind in ("fp32", "int8") if kind in report}
    size = report["input_size"]
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).numpy()
    chosen = available_engines() if engines is None else list(dict.fromkeys(["onnxruntime", *engines]))
    layers: dict[str, Any] = {}
    timed, used = engines_latency_ms(files, images, chosen, layers=layers)
    report["latency_ms"] = timed["onnxruntime"]
    report["engine_latency_ms"], report["engine_precision"] = timed, used
    for kind, key in (("fp32", "sparse_layers"), ("int8", "sparse_layers_int8")):
        if layers.get("sparse", {}).get(kind):
            rows, whole = layers["sparse"][kind]["layers"], layers["sparse"][kind]["whole_graph"]
            report[key] = {"sparse": sum(r["runs"] == "sparse" for r in rows), "weight_layers": len(rows),
                           "ways": dict(Counter(r["runs"] for r in rows)), "graph": next(iter(whole.values()), {}),
                           "layers": rows}
    return report


WAY_NAMES = {"int8": "in the int8 kernels", "sparse": "in the fp32 sparse kernels", "dense": "dense (torch)"}


def _whole_graph(r: dict[str, Any]) -> str:
    graph = r.get("graph", {})
    return (f"; the whole graph ran in ONNX Runtime, measured faster ({graph.get('onnxruntime_ms')} vs "
            f"{graph.get('sparse_ms')} ms)" if graph.get("runs") == "onnxruntime" else "")


def describe_deployment(report: dict[str, Any]) -> list[str]:
    """The report's lines for a person: each ONNX file's size and agreement, the latency, the checkpoint sizes."""
    lines = []
    for kind in ("fp32", "int8"):
        if kind in report:
            r = report[kind]
            agreement = (f"box agreement {r['box_agreement']:.2%} (torch's {r['boxes']} top boxes)"
                         if "box_agreement" in r else f"top-1 agreement {r['top1_agreement']:.2%}")
            lines.append(f"{kind}: {r['path']} ({r['bytes'] / 1e6:.2f} MB)  max |diff| {r['max_abs_diff']:.3g}  "
                         f"{agreement} on {r['num_samples']} inputs (onnxruntime)")
            for name, other in r.get("engines", {}).items():
                what = "box" if "box_agreement" in other else "top-1"
                lines.append(f"      {name}: max |diff| {other['max_abs_diff']:.3g}  {what} agreement "
                             f"{other.get('box_agreement', other['top1_agreement']):.2%}")
    for engine, timed in report.get("engine_latency_ms", {"onnxruntime": report.get("latency_ms") or {}}).items():
        if timed:
            used = report.get("engine_precision", {}).get(engine, {})
            lines.append(f"{engine}, batch 1, {report['input_size']} px: "
                         + ", ".join(f"{k} {v:.2f} ms" + (f" [{used[k]}]" if k in used else "")
                                     for k, v in timed.items())
                         + (f"  (INT8 {timed['fp32'] / timed['int8']:.2f}x fp32)" if "int8" in timed else ""))
    if "sparse_layers" in report:
        r = report["sparse_layers"]
        total = r.get("weight_layers", r.get("conv_layers"))         # conv_layers: a report from before linear layers
        lines.append(f"sparse engine: {r['sparse']} of {total} layers (convolutions and linear) run sparse (the others "
                     f"were measured faster dense){_whole_graph(r)}; per-layer times in export_report.json")
    if "sparse_layers_int8" in report:
        r = report["sparse_layers_int8"]
        ways = ", ".join(f"{n} {WAY_NAMES.get(way, way)}" for way, n in r["ways"].items())
        lines.append(f"sparse engine, INT8 file: of {r['weight_layers']} layers {ways}{_whole_graph(r)}")
    s = report["size"]
    lines.append(f"checkpoint: dense {s['dense_bytes'] / 1e6:.2f} MB, bitmask+nonzeros "
                 f"{s['compressed_bytes'] / 1e6:.2f} MB ({s['ratio']:.2f}x smaller)")
    return lines
