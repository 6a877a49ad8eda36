"""The layers of the sparse engine that hold weights -- convolutions and linear layers, each run in the sparse kernels
or as torch's dense operator -- and the buffers their outputs live in."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from utils.onnx.kernels import (
    BoundConv,
    PackedConv,
    PackedLinear,
    aligned_empty,
    sparse_linear,
    zeros_with_padded_planes,
)


def planes(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """`x` (N, C, H, W float32) as planes of contiguous rows, and its (image, plane) strides in floats: as it is when
    it has that layout (the engine's buffers, whose planes are padded to cache lines), else a contiguous copy."""
    n, c, h, w = x.shape
    image, plane, row, col = x.stride()
    if not ((col == 1 or w == 1) and (row == w or h == 1) and plane >= h * w and (image >= c * plane or n == 1)):
        x = x.contiguous()
        image, plane = c * h * w, h * w
    return x, (image if n > 1 else c * plane, plane)


class Buffers:
    """Output buffers reused across layers and runs (fresh large arrays cost page faults, and one buffer per layer
    costs memory): a free list per shape, every buffer with slack and, for images, planes padded to whole cache lines
    (zeroed once, so the padding holds finite numbers), counted references (an op may return a view of its input:
    Identity, Flatten), and one scratch buffer for prepared inputs."""

    def __init__(self):
        self.free: dict[tuple, list[torch.Tensor]] = {}
        self.owner: dict[int, torch.Tensor] = {}          # storage address -> the buffer's own tensor
        self.refs: dict[int, int] = {}
        self._scratch = np.empty(0, dtype=np.float32)

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        spare = self.free.get(shape)
        if spare:
            return spare.pop()
        tensor = torch.from_numpy(zeros_with_padded_planes(shape))
        self.owner[tensor.data_ptr()] = tensor
        return tensor

    def hold(self, tensor: torch.Tensor) -> None:
        """A name now refers to `tensor` (or a view of a buffer)."""
        address = tensor.untyped_storage().data_ptr()
        if address in self.owner:
            self.refs[address] = self.refs.get(address, 0) + 1

    def release(self, tensor: torch.Tensor) -> None:
        """A name referring to `tensor` is gone; the buffer is free once no name refers to it."""
        address = tensor.untyped_storage().data_ptr()
        if address in self.owner:
            self.refs[address] -= 1
            if self.refs[address] == 0:
                buffer = self.owner[address]
                self.free.setdefault(tuple(buffer.shape), []).append(buffer)

    def give_back(self, tensor: torch.Tensor) -> None:
        """Return a buffer no name refers to (a calibration's output)."""
        self.hold(tensor)
        self.release(tensor)

    def has_slack(self, address: int) -> bool:
        return address in self.owner

    def scratch(self, floats: int) -> int:
        if self._scratch.size < floats:
            self._scratch = aligned_empty(floats)      # aligned: prepared planes start on cache lines
        return self._scratch.ctypes.data


def run_bound(bound: dict, bind, x: torch.Tensor, residual: torch.Tensor | None, memory: Buffers, *,
              reads_in_place: bool = False) -> torch.Tensor:
    """A convolution's compiled call for `x`'s shape and layout (bound once by `bind(shape, strides)` and kept in
    `bound`), run into a buffer of `memory`, with `residual` added; `reads_in_place`: the call may read `x` where it
    lies when the buffer has slack past its end."""
    x, x_strides = planes(x)
    key = (tuple(x.shape), x_strides)
    if key not in bound:
        bound[key] = bind(key[0], x_strides)
    call = bound[key]
    out = memory.take(call.out_shape)
    res = None
    if residual is not None:
        residual, res_strides = planes(residual)         # held: the kernel reads its address
        res = (residual.data_ptr(), *res_strides)
    address = x.data_ptr()
    slack = {"x_has_slack": memory.has_slack(address)} if reads_in_place else {}
    call(address, **slack, residual=res, out=(out.data_ptr(), *planes(out)[1]),
         scratch_address=memory.scratch(call.scratch_floats))
    return out


@dataclass
class ConvLayer:
    """One Conv node and what is fused into it; runs sparse or dense as calibrated."""

    kind = "convolution"
    ways = ("sparse", "dense")

    name: str
    inputs: list[str]                     # x, and the residual when an Add is fused
    output: str
    packed: PackedConv
    weight: torch.Tensor | None           # dense copy: dropped once the layer runs sparse (rebuilt if ever needed)
    bias: torch.Tensor | None
    act: str | None
    choice: dict[tuple, str] = field(default_factory=dict)        # input shape -> 'sparse' | 'dense'
    timings: dict[tuple, dict[str, float]] = field(default_factory=dict)
    bound: dict[tuple, BoundConv] = field(default_factory=dict)     # input shape -> the call bound to it
    weight_name: str = ""                                          # the ONNX initializer the weight came from

    def run(self, way: str, x: torch.Tensor, residual: torch.Tensor | None, threads: int, isa: int,
            memory: Buffers) -> torch.Tensor:
        """Run the way named ('sparse' into a buffer of `memory`, or 'dense')."""
        if way == "sparse":
            return self.run_sparse(x, residual, threads, isa, memory)
        return self.run_dense(x, residual)

    def run_sparse(self, x: torch.Tensor, residual: torch.Tensor | None, threads: int, isa: int,
                   memory: "Buffers") -> torch.Tensor:
        """The sparse kernels, into a buffer of `memory` (the executor gives it back after the output's last use)."""
        return run_bound(self.bound, lambda shape, strides: BoundConv(self.packed, shape, x_strides=strides,
                                                                      act=self.act, threads=threads, isa=isa),
                         x, residual, memory, reads_in_place=True)

    def run_dense(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        p = self.packed
        pt, pl, pb, pr = p.pads
        if (pt, pl) != (pb, pr):
            x, pads = F.pad(x, (pl, pr, pt, pb)), (0, 0)
        else:
            pads = (pt, pl)
        if self.weight is None:
            self.weight = torch.from_numpy(p.to_dense())
        y = F.conv2d(x, self.weight, self.bias, p.stride, pads, 1, p.groups)
        if residual is not None:
            y = y + residual
        return torch.relu(y) if self.act == "relu" else F.silu(y) if self.act == "silu" else y


@dataclass
class LinearLayer:
    """One Gemm node with constant weights (a classifier): y = x W^T + b, or one MatMul by a constant weight (a
    Linear layer on tokens: x of any rank, its last dimension multiplied), sparse or dense as calibrated."""

    name: str
    inputs: list[str]
    output: str
    packed: PackedLinear                  # alpha and beta folded into the nonzeros and the bias
    weight: torch.Tensor | None           # dense (out, in) copy: dropped once the layer runs sparse
    bias: torch.Tensor | None
    choice: dict[tuple, str] = field(default_factory=dict)
    timings: dict[tuple, dict[str, float]] = field(default_factory=dict)
    weight_name: str = ""
    kind = "linear"
    ways = ("sparse", "dense")
    run = ConvLayer.run

    def run_sparse(self, x: torch.Tensor, residual: None, threads: int, isa: int, memory: Buffers) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])                       # every leading dimension is a row
        out = memory.take((rows.shape[0], self.packed.out_features))
        sparse_linear(rows.contiguous().numpy(), self.packed, out=out.numpy(), threads=threads, isa=isa)
        return out.view(*x.shape[:-1], self.packed.out_features)

    def run_dense(self, x: torch.Tensor, residual: None) -> torch.Tensor:
        if self.weight is None:
            self.weight = torch.from_numpy(self.packed.to_dense())
        return F.linear(x, self.weight, self.bias)
