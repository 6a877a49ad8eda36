"""The operators the sparse engine runs as torch functions besides Conv, and when it may (utils.onnx.graph)."""
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
}
# operators run here only with these attributes (others go to the ONNX Runtime part)
SUPPORTED_IF: dict[str, Callable[[dict[str, Any]], bool]] = {"Resize": _resize_supported}
