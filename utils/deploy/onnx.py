"""ONNX export (fp32, and INT8 QDQ for quantization-aware-trained models), ONNX Runtime sessions, and the
check that an exported file computes what the torch model computes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.errors import UserError
from utils.onnx.engines import load_engine, median_latency_ms
from utils.onnx.export import OPSET, export_module
from utils.tasks import task


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
    device = next(model.parameters()).device
    example = torch.randn(1, channels, input_size, input_size, device=device)
    kind = task(model=model)
    exported, output = kind.export_module(model), kind.output_name
    was_training = model.training
    try:
        path = export_module(exported, path, example=example, input_name="input", output_name=output, opset=opset)
    finally:
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
    _onnx()
    return load_engine("onnxruntime", path, threads=threads).session


def onnx_latency_ms(paths: dict[str, Path | str], batch: torch.Tensor, *, warmup: int = 3, runs: int = 20,
                    engine: str = "onnxruntime", threads: int | None = None) -> dict[str, float]:
    """Median wall time (ms) of one call per model on `batch` in `engine`; the models take turns, so machine
    drift hits them alike."""
    engines = {k: load_engine(engine, p, threads=threads) for k, p in paths.items()}
    x = batch.numpy()
    return median_latency_ms({k: (lambda e=e: e.run(x)) for k, e in engines.items()}, warmup=warmup, runs=runs)


@torch.no_grad()
def compare_with_torch(model: nn.Module, onnx_path: str | Path, inputs: torch.Tensor, *,
                       engine: str = "onnxruntime", precision: str = "default"
                       ) -> dict[str, float]:
    """How far the ONNX twin run by `engine` is from the torch model, as the model's task checks it (a classifier:
    max |logit difference| and top-1 agreement; a detector: decoded outputs and box agreement after NMS), and the
    precision the engine used."""
    runner = load_engine(engine, onnx_path, precision=precision)
    return {**task(model=model).compare_exported(model, lambda x: runner.run(x)[0], inputs),
            "precision": runner.precision}
