"""The convolutions of QDQ (INT8) graphs in the sparse engine: a Conv with int8 weights, the QuantizeLinear ->
DequantizeLinear of its input and (when the graph has one) of its output, and a residual Add and activation after.

Three ways, chosen per layer by the same calibration as the fp32 layers': 'int8' (kernels/sparse_qconv.c: blocks of
4 input channels, VNNI dot products), 'sparse' (the fp32 kernels on the dequantized weights, the quantizers as torch
operations) and 'dense' (torch's convolution, the same way). All three compute the QDQ graph's numbers: ONNX
Runtime's reference operators up to fp32 rounding (a value that rounding moves across a quantization step moves by
one step).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from utils.onnx.kernels.quantized import BoundQConv, PackedQConv, Quantizer
from utils.onnx.layers import Buffers, ConvLayer, run_bound


def fake_quantize(x: torch.Tensor, q: Quantizer) -> torch.Tensor:
    """ONNX QuantizeLinear then DequantizeLinear (uint8, round half to even): (clamp(round(x / s) + z) - z) * s."""
    return (torch.clamp(torch.round(x / q.scale) + q.zero_point, 0, 255) - q.zero_point) * q.scale


@dataclass
class QConvLayer:
    """One QDQ Conv node and what is fused around it; runs 'int8', 'sparse' or 'dense' as calibrated."""

    kind = "convolution int8"
    ways = ("int8", "sparse", "dense")

    name: str
    inputs: list[str]                     # the input before its QuantizeLinear, and the residual when fused
    output: str
    packed: PackedQConv
    fp32: ConvLayer                       # the dequantized weights and bias, nothing fused: the other two ways
    act: str | None
    choice: dict[tuple, str] = field(default_factory=dict)
    timings: dict[tuple, dict[str, float]] = field(default_factory=dict)
    bound: dict[tuple, BoundQConv] = field(default_factory=dict)
    weight_name: str = ""

    @property
    def weight(self) -> torch.Tensor | None:
        return self.fp32.weight

    @weight.setter
    def weight(self, value: torch.Tensor | None) -> None:
        self.fp32.weight = value

    def run(self, way: str, x: torch.Tensor, residual: torch.Tensor | None, threads: int, isa: int,
            memory: Buffers) -> torch.Tensor:
        if way == "int8":
            return self.run_int8(x, residual, threads, isa, memory)
        if way == "sparse":
            y = self.fp32.run_sparse(fake_quantize(x, self.packed.input_q), None, threads, isa, memory)
        else:
            y = self.fp32.run_dense(fake_quantize(x, self.packed.input_q), None)
        out = self._epilogue(y, residual)
        if out is not y:
            memory.give_back(y)
        return out

    def run_int8(self, x: torch.Tensor, residual: torch.Tensor | None, threads: int, isa: int,
                 memory: Buffers) -> torch.Tensor:
        """The int8 kernels, into a buffer of `memory`."""
        return run_bound(self.bound, lambda shape, strides: BoundQConv(self.packed, shape, x_strides=strides,
                                                                       act=self.act, threads=threads, isa=isa),
                         x, residual, memory)

    def _epilogue(self, y: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        if self.packed.output_q is not None:
            y = fake_quantize(y, self.packed.output_q)
        if residual is not None:
            y = y + residual
        return torch.relu(y) if self.act == "relu" else F.silu(y) if self.act == "silu" else y
