"""The int8 sparse convolution of QDQ graphs (kernels/sparse_qconv.c): int8 weights as blocks of 4 input channels,
inputs quantized while they are prepared, outputs dequantized (and fake-quantized as the graph says) in fp32."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from utils.onnx.kernels import (
    ACTIVATIONS,
    Geometry,
    _ptr,
    _row_ptr,
    aligned_empty,
    empty_with_slack,
    grid_geometry,
    library,
)

ISA_NAMES = {0: "portable C", 2: "AVX-512 VNNI"}


@dataclass(frozen=True)
class Quantizer:
    """An ONNX QuantizeLinear (or the QuantizeLinear -> DequantizeLinear pair) with one scale, as uint8: an int8
    type's zero point is shifted by 128 (the same numbers once dequantized)."""

    scale: float
    zero_point: int               # 0..255


@dataclass
class PackedQConv:
    """A QDQ Conv2d (groups 1): CSR over output channels of its nonzero blocks, each an int32 word of the 4 signed
    weight bytes of input channels 4g..4g+3 at one kernel position, and per output channel the factors that turn
    the int32 sums into the graph's fp32 output."""

    out_channels: int
    in_channels: int
    kernel: tuple[int, int]
    stride: int
    pads: tuple[int, int, int, int]
    row_ptr: np.ndarray                  # int32 (out_channels + 1)
    words: np.ndarray                    # int32 (blocks)
    group: np.ndarray                    # int32 input-channel group of each block
    kh: np.ndarray
    kw: np.ndarray
    scale: np.ndarray                    # float32 (out_channels): input scale x weight scale
    comp: np.ndarray                     # int32 (out_channels): input zero point x the channel's weight sum
    bias: np.ndarray | None
    input_q: Quantizer
    output_q: Quantizer | None           # the output's QuantizeLinear -> DequantizeLinear, when the graph has one
    nonzeros: int                        # nonzero int8 weights
    _geometry: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_int8(cls, weight: np.ndarray, weight_scale: np.ndarray, bias: np.ndarray | None, *, stride: int,
                  pads: tuple[int, int, int, int], input_q: Quantizer, output_q: Quantizer | None) -> "PackedQConv":
        """From the int8 (out, in, kh, kw) weight (zero point 0) and its scale per output channel."""
        co, ci, kh, kw = weight.shape
        groups = -(-ci // 4)
        padded = np.zeros((co, groups * 4, kh, kw), dtype=np.int8)
        padded[:, :ci] = weight
        # (co, g, kh, kw, 4 channels) -> one little-endian int32 per block: byte k is channel 4g + k
        blocks = np.ascontiguousarray(padded.reshape(co, groups, 4, kh, kw).transpose(0, 1, 3, 4, 2)).view(np.int32)
        blocks = blocks.reshape(co, groups, kh, kw)
        rows, g, r, c = np.nonzero(blocks)
        scale = (np.float32(input_q.scale) * np.broadcast_to(weight_scale, (co,)).astype(np.float32))
        comp = input_q.zero_point * weight.reshape(co, -1).astype(np.int64).sum(1)
        return cls(co, ci, (kh, kw), stride, tuple(pads), _row_ptr(rows, co),
                   np.ascontiguousarray(blocks[rows, g, r, c]), g.astype(np.int32), r.astype(np.int32),
                   c.astype(np.int32), scale.astype(np.float32), comp.astype(np.int32),
                   None if bias is None else np.ascontiguousarray(bias, dtype=np.float32), input_q, output_q,
                   int(np.count_nonzero(weight)))

    @property
    def channel_groups(self) -> int:
        """Groups of 4 input channels (the last padded with channels whose weights are 0)."""
        return -(-self.in_channels // 4)

    @property
    def blocks(self) -> int:
        return len(self.words)

    @property
    def weight_count(self) -> int:
        return self.out_channels * self.in_channels * self.kernel[0] * self.kernel[1]

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / max(self.weight_count, 1)

    @property
    def block_density(self) -> float:
        """The fraction of 4-channel blocks holding a nonzero: the work the kernel does against a dense one."""
        return self.blocks / max(self.out_channels * self.channel_groups * self.kernel[0] * self.kernel[1], 1)

    def geometry(self, h: int, w: int) -> Geometry:
        """As PackedConv.geometry, in prepared words (4 channels each) instead of floats."""
        if (h, w) not in self._geometry:
            self._geometry[(h, w)] = grid_geometry(h, w, kernel=self.kernel, stride=self.stride, pads=self.pads,
                                                   kh=self.kh, kw=self.kw, planes=self.channel_groups,
                                                   plane_of=self.group)
        return self._geometry[(h, w)]


class BoundQConv:
    """A packed int8 convolution bound to one input shape and layout (as kernels.BoundConv): a call quantizes and
    prepares the input into the caller's scratch (`scratch_floats` 4-byte words) and runs the kernel into `out`."""

    def __init__(self, packed: PackedQConv, shape: tuple[int, int, int, int], *, x_strides: tuple[int, int],
                 act: str | None, threads: int, isa: int):
        n, c, h, w = shape
        g = packed.geometry(h, w)
        self.g, self.lib, self.n = g, library(), n
        self.out_shape = (n, packed.out_channels, g.ho, g.wo)
        self.scratch_floats = n * g.image_floats
        q, out_q = packed.input_q, packed.output_q
        self.prepare_args = (*x_strides, n, c, h, w, packed.stride, packed.pads[0], packed.pads[1], g.hq, g.wq,
                             g.phases, q.scale, q.zero_point)
        self.weights = (packed.row_ptr.ctypes.data, g.offsets.ctypes.data, packed.words.ctypes.data,
                        packed.out_channels, packed.scale.ctypes.data, packed.comp.ctypes.data, _ptr(packed.bias),
                        out_q.scale if out_q else 0.0, float(out_q.zero_point) if out_q else 0.0, g.ho, g.wq, g.wo)
        self.threads, self.isa, self.act = threads, isa, ACTIVATIONS[act]

    def __call__(self, x_address: int, *, residual: tuple[int, int, int] | None, out: tuple[int, int, int],
                 scratch_address: int) -> None:
        self.lib.spq_prepare(x_address, *self.prepare_args, scratch_address, self.g.image_floats, self.threads,
                             self.isa)
        self.lib.spq_run(scratch_address, self.g.image_floats, self.n, *self.weights, *out,
                         *(residual or (None, 0, 0)), self.act, self.threads, self.isa)


def sparse_qconv(x: np.ndarray, packed: PackedQConv, *, residual: np.ndarray | None = None, act: str | None = None,
                 threads: int = 1, isa: int = 2) -> np.ndarray:
    """The QDQ convolution of the float32 (N, C, H, W) `x`: quantized with the input's quantizer, the int8 blocks,
    dequantized, the output's quantizer applied (if any), plus `residual`, then `act`."""
    n, c, h, w = x.shape
    if c != packed.in_channels:
        raise ValueError(f"input has {c} channels, the convolution takes {packed.in_channels}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    call = BoundQConv(packed, x.shape, x_strides=(c * h * w, h * w), act=act, threads=threads, isa=isa)
    scratch = aligned_empty(call.scratch_floats)
    y = empty_with_slack(call.out_shape)
    plane = y.shape[2] * y.shape[3]
    res = None
    if residual is not None:
        residual = np.ascontiguousarray(residual, dtype=np.float32)
        res = (residual.ctypes.data, packed.out_channels * plane, plane)
    call(x.ctypes.data, residual=res, out=(y.ctypes.data, packed.out_channels * plane, plane),
         scratch_address=scratch.ctypes.data)
    return y


def qisa(isa: int) -> int:
    """The int8 kernels' instruction set here (2: AVX-512 VNNI, 0: portable C), capped as the fp32 kernels'."""
    return library().spq_isa(isa)
