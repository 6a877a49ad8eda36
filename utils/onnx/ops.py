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


# --- what a transformer's graph holds besides Conv and Linear layers (timm's ViT, DeiT, Swin as torch exports them):
# tensor shuffles, normalisation, attention's activation products, and the int64 shape arithmetic around them.

CAST_TYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 11: torch.float64}


def _ints(t: torch.Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axes(a: dict[str, Any], given: torch.Tensor | None) -> list[int]:
    """An axes list from the input (opset >= 13) or the attribute (older)."""
    return _ints(given) if given is not None else list(a.get("axes", []))


def _reshape(a: dict[str, Any], x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """ONNX Reshape: 0 copies the input's dimension (unless allowzero), -1 is inferred."""
    dims = _ints(shape)
    if not a.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _unsqueeze(a: dict[str, Any], x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    rank = x.dim() + len(_axes(a, axes))
    for axis in sorted(ax % rank for ax in _axes(a, axes)):
        x = x.unsqueeze(axis)
    return x


def _squeeze(a: dict[str, Any], x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    chosen = _axes(a, axes)
    if not chosen:
        return x.squeeze()
    for axis in sorted((ax % x.dim() for ax in chosen), reverse=True):
        x = x.squeeze(axis)
    return x


def _slice(a: dict[str, Any], x: torch.Tensor, starts, ends, axes=None, steps=None) -> torch.Tensor:
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) or list(range(len(starts)))
    steps = _ints(steps) or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        size = x.shape[axis]
        start, end = start + size if start < 0 else start, end + size if end < 0 else end
        if step > 0:
            start, end = max(0, min(start, size)), max(0, min(end, size))
        else:                                             # a negative step walks back from start, end excluded
            start, end = max(-1, min(start, size - 1)), max(-1, min(end, size - 1))
        x = x.index_select(axis % x.dim(), torch.arange(start, end, step, dtype=torch.long))
    return x


def _gather(a: dict[str, Any], x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    axis = a.get("axis", 0) % x.dim()
    flat = indices.reshape(-1).long()
    flat = torch.where(flat < 0, flat + x.shape[axis], flat)
    picked = x.index_select(axis, flat)
    return picked.reshape((*x.shape[:axis], *indices.shape, *x.shape[axis + 1:]))


def _expand(a: dict[str, Any], x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """ONNX Expand: broadcast both ways (a 1 in `shape` keeps the input's dimension)."""
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


def _constant_of_shape(a: dict[str, Any], shape: torch.Tensor) -> torch.Tensor:
    from onnx import numpy_helper
    value = a.get("value")
    fill = torch.from_numpy(numpy_helper.to_array(value).copy()).reshape(-1) if value is not None \
        else torch.zeros(1)
    return torch.full(_ints(shape), fill[0].item(), dtype=fill.dtype)


def _split(a: dict[str, Any], x: torch.Tensor, split: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    axis = a.get("axis", 0)
    if split is not None and split.numel():
        return torch.split(x, _ints(split), axis)
    if a.get("split"):
        return torch.split(x, list(a["split"]), axis)
    parts = a["num_outputs"]
    return torch.split(x, -(-x.shape[axis] // parts), axis)


def _layer_norm(a: dict[str, Any], x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
    axis = a.get("axis", -1) % x.dim()
    return F.layer_norm(x, x.shape[axis:], scale, bias, a.get("epsilon", 1e-5))


def _div(a: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Integer division truncates (as ONNX Runtime's does), float division is exact."""
    if x.is_floating_point() or y.is_floating_point():
        return x / y
    return torch.div(x, y, rounding_mode="trunc")


def _pad(a: dict[str, Any], x: torch.Tensor, pads: torch.Tensor, value: torch.Tensor | None = None,
         axes: torch.Tensor | None = None) -> torch.Tensor:
    """ONNX Pad, constant mode: pads as [begin of each axis..., end of each axis...] (negative ones crop)."""
    chosen = [ax % x.dim() for ax in _ints(axes)] or list(range(x.dim()))
    given = _ints(pads)
    begin, end = dict(zip(chosen, given[:len(chosen)])), dict(zip(chosen, given[len(chosen):]))
    torch_pads = [p for axis in reversed(range(x.dim())) for p in (begin.get(axis, 0), end.get(axis, 0))]
    fill = 0.0 if value is None or not value.numel() else value.reshape(-1)[0].item()
    return F.pad(x, torch_pads, value=fill)


def _reduce_mean(a: dict[str, Any], x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    chosen = _axes(a, axes)
    if not chosen:
        return x if a.get("noop_with_empty_axes", 0) else x.mean(dim=tuple(range(x.dim())),
                                                                 keepdim=bool(a.get("keepdims", 1)))
    return x.mean(dim=tuple(chosen), keepdim=bool(a.get("keepdims", 1)))


def _shape(a: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(x.shape[a.get("start", 0):a.get("end", x.dim())], dtype=torch.int64)


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
    "Cast": lambda a, x: x.to(CAST_TYPES[a["to"]]),
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
    "MatMul": lambda a, x, y: torch.matmul(x, y),
    "Sub": lambda a, x, y: x - y,
    "Div": _div,
    "Sqrt": lambda a, x: torch.sqrt(x),
    "Erf": lambda a, x: torch.erf(x),
    "Softmax": lambda a, x: torch.softmax(x, a.get("axis", -1)),
    "LayerNormalization": _layer_norm,
    "Transpose": lambda a, x: x.permute(*(a.get("perm") or range(x.dim() - 1, -1, -1))),
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Gather": _gather,
    "Expand": _expand,
    "ConstantOfShape": _constant_of_shape,
    "Shape": _shape,
    "Equal": lambda a, x, y: x == y,
    "Where": lambda a, c, x, y: torch.where(c, x, y),
    "Split": _split,
    "Mod": lambda a, x, y: torch.fmod(x, y) if a.get("fmod", 0) else torch.remainder(x, y),
    "Pad": _pad,
    "ReduceMean": _reduce_mean,
}
# operators run here only with these attributes (others go to the ONNX Runtime part)
SUPPORTED_IF: dict[str, Callable[[dict[str, Any]], bool]] = {
    "Resize": _resize_supported,
    "Cast": lambda a: a.get("to") in CAST_TYPES,
    "Softmax": lambda a: True,
    "Slice": lambda a: True,
    "Pad": lambda a: a.get("mode", b"constant") in (b"constant", "constant"),
    "QuantizeLinear": _no_blocks,
    "DequantizeLinear": _no_blocks,
}
