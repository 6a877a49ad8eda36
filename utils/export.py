"""Deployment export: ONNX (fp32, and INT8 QDQ for quantization-aware-trained models) + compressed size.

    python -m utils.export RUN_DIR/model.pt [--out DIR] [--num_samples 64]

Each ONNX file is checked with `onnx.checker`, run in ONNX Runtime and compared with the torch model on
sample inputs (max |difference| of the logits, top-1 agreement). The sparse checkpoint is also written with
its sparse tensors stored as bitmask + nonzero values, and both file sizes are reported.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from policies.quantization import load_qat_state_, qat_modules
from utils.errors import UserError, exit_on_user_error
from utils.io import atomic_torch_save

log = logging.getLogger(__name__)

OPSET = 17
COMPRESSED_FORMAT = "bitmask-nonzeros-v1"
SPARSE_ENOUGH = 0.125   # below this fraction of zeros a bitmask costs more than it saves (fp32)


def _onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UserError("export needs the onnx and onnxruntime packages: pip install onnx onnxruntime") from None
    return onnx, onnxruntime


def export_onnx(model: nn.Module, path: str | Path, *, input_size: int, channels: int = 3, opset: int = OPSET) -> Path:
    """Export `model` (eval mode, batch dimension dynamic) to ONNX and validate it with onnx.checker."""
    onnx, _ = _onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    example = torch.randn(1, channels, input_size, input_size, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        # The TorchScript exporter maps torch.fake_quantize_* to QuantizeLinear/DequantizeLinear pairs.
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    model.train(was_training)
    proto = onnx.load(str(path))
    if fold_quantized_weights_(proto):
        onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    return path


def fold_quantized_weights_(proto) -> int:
    """Store weights as int8 initializers: each QuantizeLinear of a constant becomes its int8 result, so the
    INT8 file holds 1 byte per weight and only DequantizeLinear runs on them. Returns how many were folded."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def constant(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    folded, keep = 0, []
    for node in graph.node:
        values = [constant(i) for i in node.input] if node.op_type == "QuantizeLinear" else []
        if len(values) < 3 or node.input[0] not in inits or any(v is None for v in values):
            keep.append(node)
            continue
        weight, scale, zero_point = values
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * weight.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = scale.size
        info = np.iinfo(zero_point.dtype)
        # np.rint rounds half to even, as QuantizeLinear (and torch's fake-quantize) do.
        q = np.clip(np.rint(weight / scale.reshape(shape)) + zero_point.reshape(shape).astype(np.int32),
                    info.min, info.max).astype(zero_point.dtype)
        graph.initializer.append(numpy_helper.from_array(q, name=node.output[0]))
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        alive = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(alive)
    return folded


def onnx_session(path: str | Path, *, threads: int | None = None):
    """An ONNX Runtime CPU session with full graph optimisation (QDQ pairs fuse into int8 kernels)."""
    _, ort = _onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def compare_with_torch(model: nn.Module, onnx_path: str | Path, inputs: torch.Tensor, *,
                       batch_size: int = 32) -> dict[str, float]:
    """Max |logit difference| and top-1 agreement between the torch model and its ONNX Runtime twin."""
    session = onnx_session(onnx_path)
    model.eval()
    device = next(model.parameters()).device
    diffs, agree = [], []
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size]
        ref = model(x.to(device)).float().cpu().numpy()
        out = session.run(None, {"input": x.cpu().numpy()})[0]
        diffs.append(float(np.abs(out - ref).max()))
        agree.append(out.argmax(1) == ref.argmax(1))
    return {"max_abs_diff": max(diffs), "top1_agreement": float(np.concatenate(agree).mean()),
            "num_samples": int(len(inputs))}


# ---------------------------------------------------------------- compressed (bitmask + nonzeros) storage


def compress_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Sparse float tensors as (packed bitmask, nonzero values); everything else as is."""
    tensors: dict[str, Any] = {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        zeros = float((t == 0).float().mean()) if t.is_floating_point() and t.numel() else 0.0
        if t.dim() >= 2 and zeros >= SPARSE_ENOUGH:
            mask = (t != 0).flatten()
            bits = torch.from_numpy(np.packbits(mask.numpy()))
            tensors[name] = {"shape": list(t.shape), "bitmask": bits, "values": t.flatten()[mask].clone()}
        else:
            tensors[name] = t.clone()
    return {"format": COMPRESSED_FORMAT, "tensors": tensors}


def decompress_state_dict(payload: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Inverse of `compress_state_dict` (bit for bit)."""
    if payload.get("format") != COMPRESSED_FORMAT:
        raise UserError(f"not a {COMPRESSED_FORMAT} file (format {payload.get('format')!r})")
    out = {}
    for name, item in payload["tensors"].items():
        if isinstance(item, dict):
            numel = int(np.prod(item["shape"]))
            mask = torch.from_numpy(np.unpackbits(item["bitmask"].numpy(), count=numel).astype(bool))
            dense = torch.zeros(numel, dtype=item["values"].dtype)
            dense[mask] = item["values"]
            out[name] = dense.reshape(item["shape"])
        else:
            out[name] = item
    return out


def _saved_bytes(obj: Any) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def compressed_size_report(state_dict: Mapping[str, torch.Tensor],
                           out_path: str | Path | None = None) -> dict[str, Any]:
    """Bytes of the state dict saved dense vs with bitmask + nonzeros (written to `out_path` when given)."""
    dense = {k: v.detach().cpu() for k, v in state_dict.items()}
    payload = compress_state_dict(dense)
    if out_path is not None:
        atomic_torch_save(out_path, payload)
        compressed = Path(out_path).stat().st_size
    else:
        compressed = _saved_bytes(payload)
    dense_bytes = _saved_bytes(dense)
    return {"dense_bytes": dense_bytes, "compressed_bytes": compressed, "ratio": dense_bytes / compressed,
            "sparse_tensors": sum(isinstance(v, dict) for v in payload["tensors"].values())}


# ---------------------------------------------------------------- one checkpoint -> everything


def _load(checkpoint: str | Path, flavour: str | None) -> tuple[nn.Module, dict | None]:
    from utils.checkpoints import load_checkpoint

    loaded = load_checkpoint(checkpoint, flavour=flavour, keep_classifier=True)
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True) if loaded.flavour.name == "native" else {}
    quant = (raw.get("extra") or {}).get("quantization") if isinstance(raw, dict) else None
    return loaded.model, quant


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, flavour: str | None = None,
                      image_size: int | None = None, num_samples: int = 64, seed: int = 0,
                      inputs: torch.Tensor | None = None) -> dict[str, Any]:
    """fp32 ONNX (+ INT8 QDQ ONNX when the checkpoint was quantization-aware trained), checks, sizes.

    `inputs` (N, 3, H, W) are the sample inputs compared on (default: `num_samples` seeded N(0, 1) images,
    which matches normalised data)."""
    out_dir = Path(out_dir)
    model, quant = _load(checkpoint, flavour)
    model.eval()
    size = image_size or (inputs.shape[-1] if inputs is not None else getattr(model, "default_input_size", 224))
    if inputs is None:
        inputs = torch.randn(num_samples, 3, size, size, generator=torch.Generator().manual_seed(seed))
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "input_size": size}
    fp32 = export_onnx(model, out_dir / "model_fp32.onnx", input_size=size)
    report["fp32"] = {"path": str(fp32), "bytes": fp32.stat().st_size, **compare_with_torch(model, fp32, inputs)}
    if quant and quant.get("modules"):
        load_qat_state_(model, quant)
        int8 = export_onnx(model, out_dir / "model_int8.onnx", input_size=size)
        report["int8"] = {"path": str(int8), "bytes": int8.stat().st_size, "quantized_modules": len(qat_modules(model)),
                          **compare_with_torch(model, int8, inputs)}
    report["size"] = compressed_size_report(model.state_dict(), out_dir / "model_compressed.pt")
    return report


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint (any flavour); QAT runs' model.pt also export INT8")
    p.add_argument("--out", help="output directory (default: next to the checkpoint, '<stem>_export')")
    p.add_argument("--flavour", help="checkpoint flavour (auto-detected when omitted)")
    p.add_argument("--image_size", type=int, help="input side length (default: the model's)")
    p.add_argument("--num_samples", type=int, default=64, help="random sample inputs for the comparison")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = Path(args.checkpoint)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    out = Path(args.out) if args.out else path.parent / f"{path.stem}_export"
    report = export_checkpoint(path, out, flavour=args.flavour, image_size=args.image_size,
                               num_samples=args.num_samples)
    (out / "export_report.json").write_text(json.dumps(report, indent=2))
    for kind in ("fp32", "int8"):
        if kind in report:
            r = report[kind]
            print(f"{kind}: {r['path']} ({r['bytes'] / 1e6:.2f} MB)  max |diff| {r['max_abs_diff']:.3g}  "
                  f"top-1 agreement {r['top1_agreement']:.2%} on {r['num_samples']} inputs")
    s = report["size"]
    print(f"checkpoint: dense {s['dense_bytes'] / 1e6:.2f} MB, bitmask+nonzeros {s['compressed_bytes'] / 1e6:.2f} MB "
          f"({s['ratio']:.2f}x smaller)")
    return report


if __name__ == "__main__":
    main()
