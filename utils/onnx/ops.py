"""The operators the sparse engine runs as torch functions besides Conv, and when it may (utils.onnx.graph); a QDQ
graph's quantizers among them."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F


def attributes(node) -> dict[str, Any]:
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _max_pool(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    k, s = a["kernel_shape"], a.get("strides", [1, 1])
    pt, pl, pb, pr = a.get("pads", [0, 0, 0, 0])
    if (pt, pl) != (pb, pr):
        x = F.pad(x, (pl, pr, pt, pb), value=float("-inf"))
        pt = pl = 0
    return F.max_pool2d(x, k, s, (pt, pl), ceil_mode=bool(a.get("ceil_mode", 0)))


def _gemm(a: dict[str, Any], x: torch.Tensor, w: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    out = a.get("alpha", 1.0) * (x @ w)
    return out if c is None else out + a.get("beta", 1.0) * c


def _flatten(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    axis = a.get("axis", 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _resize(a: dict[str, Any], x: torch.Tensor, roi=None, scales=None, sizes=None) -> torch.Tensor:
    """ONNX Resize as the exporters write nearest upsampling (asymmetric coordinates, floor): torch's 'nearest'."""
    if scales is not None and scales.numel():
        return F.interpolate(x, scale_factor=[float(v) for v in scales[2:]], mode="nearest")
    return F.interpolate(x, size=[int(v) for v in sizes[2:]], mode="nearest")


def _resize_supported(a: dict[str, Any]) -> bool:
    mode = a.get("mode", b"nearest")
    how = a.get("coordinate_transformation_mode", b"half_pixel")
    return mode in (b"nearest", "nearest") and how in (b"asymmetric", "asymmetric") \
        and a.get("nearest_mode", b"round_prefer_floor") in (b"floor", "floor")


def _per_axis(x: torch.Tensor, v: torch.Tensor, axis: int) -> torch.Tensor:
    """A QuantizeLinear/DequantizeLinear scale or zero point shaped to broadcast over `x` (one value, or one per
    index of `axis`)."""
    if v.numel() == 1:
        return v.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return v.reshape(shape)


def _quantize(a: dict[str, Any], x: torch.Tensor, scale: torch.Tensor, zero_point=None) -> torch.Tensor:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point) in the zero point's integer type
    (uint8 without one)."""
    dtype = torch.uint8 if zero_point is None else zero_point.dtype
    axis = a.get("axis", 1)
    zp = 0 if zero_point is None else _per_axis(x, zero_point.float(), axis)
    info = torch.iinfo(dtype)
    return torch.clamp(torch.round(x / _per_axis(x, scale, axis)) + zp, info.min, info.max).to(dtype)


def _dequantize(a: dict[str, Any], q: torch.Tensor, scale: torch.Tensor, zero_point=None) -> torch.Tensor:
    """ONNX DequantizeLinear: (q - zero_point) * scale, fp32."""
    axis = a.get("axis", 1)
    zp = 0 if zero_point is None else _per_axis(q, zero_point.float(), axis)
    return (q.float() - zp) * _per_axis(q, scale, axis)


def _no_blocks(a: dict[str, Any]) -> bool:
    """Per-tensor or per-axis quantization (not opset 21's blocked one, nor a forced output type)."""
    return not a.get("block_size", 0) and "output_dtype" not in a


# op type -> f(attributes, *inputs): the operators run here besides Conv (tensors are torch, fp32)
OPS: dict[str, Callable[..., torch.Tensor]] = {
    "Identity": lambda a, x: x,
    "Relu": lambda a, x: torch.relu(x),
    "Sigmoid": lambda a, x: torch.sigmoid(x),
    "Add": lambda a, x, y: x + y,
    "Mul": lambda a, x, y: x * y,
    "MaxPool": lambda a, x: _max_pool(x, a),
    "GlobalAveragePool": lambda a, x: x.mean((2, 3), keepdim=True),
    "Flatten": lambda a, x: _flatten(x, a),
    "Gemm": _gemm,
    "Concat": lambda a, *xs: torch.cat(xs, a["axis"]),
    "Resize": _resize,
    "Cast": lambda a, x: x.float(),
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
}
# operators run here only with these attributes (others go to the ONNX Runtime part)
SUPPORTED_IF: dict[str, Callable[[dict[str, Any]], bool]] = {
    "Resize": _resize_supported,
    "Cast": lambda a: a.get("to") == 1,                  # to float32 (the QDQ exporters' no-op casts)
    "QuantizeLinear": _no_blocks,
    "DequantizeLinear": _no_blocks,
}
