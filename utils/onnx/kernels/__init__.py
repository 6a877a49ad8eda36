"""The compiled sparse convolution kernels (kernels/sparse_conv.c; int8: sparse_qconv.c, Python face in
kernels.quantized) and their Python face.

`make kernels` builds `build/libsparse_conv.so` with the system C compiler (gcc or cc, OpenMP); where it is missing
`KernelsMissing` says so in one line and the other engines still run. See sparse_conv.c for the layout.
"""
from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LIBRARY = HERE / "build" / "libsparse_conv.so"
ACTIVATIONS = {None: 0, "relu": 1, "silu": 2}
ISA_NAMES = {0: "scalar", 1: "AVX2+FMA", 2: "AVX-512"}


class KernelsMissing(ImportError):
    """The compiled library is not there (not built, or no compiler)."""


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """The loaded kernel library; KernelsMissing (one line) when it was not built."""
    if not LIBRARY.is_file():
        raise KernelsMissing(f"{LIBRARY} is not built: run `make kernels` (needs a C compiler with OpenMP, e.g. "
                             "apt-get install gcc)")
    return declare(ctypes.CDLL(str(LIBRARY)))


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Give a loaded build of sparse_conv.c its functions' argument types (also for bench/sparse_kernels.py's
    variant builds)."""
    f32 = i32 = ctypes.c_void_p        # addresses as ints: ctypes' pointer objects cost microseconds a call
    i64 = ctypes.c_int64
    c_int = ctypes.c_int
    lib.spconv_run.argtypes = [f32, i64, c_int, i32, i32, f32, c_int, f32, c_int, c_int, c_int, f32, i64, i64, f32, i64,
                               i64, c_int, c_int, c_int]
    lib.spconv_run.restype = None
    lib.spconv_prepare.argtypes = [f32, i64, i64, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int,
                                   c_int, f32, i64, c_int]
    lib.spconv_prepare.restype = None
    lib.spconv_isa.argtypes, lib.spconv_isa.restype = [c_int], c_int
    lib.spconv_tile.argtypes, lib.spconv_tile.restype = [], c_int
    lib.spconv_maxpool.argtypes = [f32, i64, i64, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int,
                                   c_int, c_int, f32, i64, i64, c_int]
    lib.spconv_maxpool.restype = None
    lib.spconv_stream_bytes.argtypes, lib.spconv_stream_bytes.restype = [i64], i64
    lib.spconv_prepare_by_rows.argtypes, lib.spconv_prepare_by_rows.restype = [c_int], c_int
    lib.splinear_run.argtypes = [f32, c_int, c_int, i32, i32, f32, c_int, f32, f32, c_int, c_int]
    lib.splinear_run.restype = None
    lib.spq_isa.argtypes, lib.spq_isa.restype = [c_int], c_int
    f = ctypes.c_float
    lib.spq_prepare.argtypes = [f32, i64, i64, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int,
                                f, c_int, i32, i64, c_int, c_int]
    lib.spq_prepare.restype = None
    lib.spq_run.argtypes = [i32, i64, c_int, i32, i32, i32, c_int, f32, i32, f32, f, f, c_int, c_int, c_int, f32, i64,
                            i64, f32, i64, i64, c_int, c_int, c_int]
    lib.spq_run.restype = None
    return lib


def max_isa() -> int:
    """2: AVX-512, 1: AVX2+FMA, 0: scalar -- the best this CPU runs (SPARSE_ISA=avx2|scalar caps it)."""
    cap = {"scalar": 0, "avx2": 1}.get(os.environ.get("SPARSE_ISA", "").lower(), 2)
    return library().spconv_isa(cap)


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def _row_ptr(rows: np.ndarray, count: int) -> np.ndarray:
    """CSR row starts (int32, count + 1) for the sorted row index of each nonzero."""
    row_ptr = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=count), out=row_ptr[1:])
    return row_ptr


@dataclass(frozen=True)
class Geometry:
    """Where a convolution of one input size reads and writes: output size, prepared-grid size, offsets."""

    ho: int
    wo: int
    hq: int
    wq: int
    offsets: np.ndarray          # int32, one per nonzero, in the CSR order of PackedConv
    image_floats: int            # prepared floats per image, slack included
    phases: int                  # stride phases prepared: the first ones up to the last a weight reads


class _Nonzeros:
    """What both packings share: CSR rows (`row_ptr`), the nonzero `values`, and the dense `weight_count`."""

    row_ptr: np.ndarray
    values: np.ndarray

    def rows(self) -> np.ndarray:
        """The row (output channel or feature) of each nonzero."""
        return np.repeat(np.arange(len(self.row_ptr) - 1), np.diff(self.row_ptr))

    @property
    def nnz(self) -> int:
        return len(self.values)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / max(self.weight_count, 1)


@dataclass
class PackedConv(_Nonzeros):
    """A Conv2d's weights as CSR over output channels: the nonzeros and where each sits (input channel, kh, kw)."""

    out_channels: int
    in_channels: int
    kernel: tuple[int, int]
    stride: int
    pads: tuple[int, int, int, int]           # top, left, bottom, right
    groups: int
    row_ptr: np.ndarray                      # int32 (out_channels + 1)
    values: np.ndarray                       # float32 (nnz)
    channel: np.ndarray                      # int32 input channel of each nonzero (groups resolved)
    kh: np.ndarray
    kw: np.ndarray
    bias: np.ndarray | None
    _geometry: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dense(cls, weight: np.ndarray, bias: np.ndarray | None, *, stride: int, pads: tuple[int, int, int, int],
                   groups: int = 1) -> "PackedConv":
        co, cig, kh, kw = weight.shape
        rows, cols = np.nonzero(weight.reshape(co, -1))                # row-major: CSR order
        ci, r = np.divmod(cols, kh * kw)
        per_group = co // groups
        channel = (rows // per_group) * cig + ci
        return cls(co, cig * groups, (kh, kw), stride, tuple(pads), groups, _row_ptr(rows, co),
                   np.ascontiguousarray(weight.reshape(co, -1)[rows, cols], dtype=np.float32),
                   channel.astype(np.int32), (r // kw).astype(np.int32), (r % kw).astype(np.int32),
                   None if bias is None else np.ascontiguousarray(bias, dtype=np.float32))

    def to_dense(self) -> np.ndarray:
        """The (out, in / groups, kh, kw) weight back from the nonzeros (for a layer that runs dense after all)."""
        co, (kh, kw) = self.out_channels, self.kernel
        cig = self.in_channels // self.groups
        rows = self.rows()
        dense = np.zeros((co, cig, kh, kw), dtype=np.float32)
        dense[rows, self.channel - (rows // (co // self.groups)) * cig, self.kh, self.kw] = self.values
        return dense

    @property
    def weight_count(self) -> int:
        return self.out_channels * (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]

    @property
    def reads_input_as_is(self) -> bool:
        """A 1x1, stride-1, unpadded convolution reads its input in place (its grid is the input's pixels)."""
        return self.kernel == (1, 1) and self.stride == 1 and self.pads == (0, 0, 0, 0)

    def geometry(self, h: int, w: int) -> Geometry:
        """Output size and offsets for an h x w input (cached per size)."""
        if (h, w) not in self._geometry:
            self._geometry[(h, w)] = grid_geometry(h, w, kernel=self.kernel, stride=self.stride, pads=self.pads,
                                                   kh=self.kh, kw=self.kw, planes=self.in_channels,
                                                   plane_of=self.channel)
        return self._geometry[(h, w)]


def grid_geometry(h: int, w: int, *, kernel: tuple[int, int], stride: int, pads: tuple[int, int, int, int],
                  kh: np.ndarray, kw: np.ndarray, planes: int, plane_of: np.ndarray) -> Geometry:
    """Where a convolution reads and writes for an h x w input (see sparse_conv.c's layout): each stored weight's
    offset into an input prepared as `planes` planes per stride phase, the weight at (kh, kw) reading plane
    `plane_of` -- an input channel for the fp32 kernels, a group of 4 channels for the int8 ones."""
    (kh_, kw_), s, (pt, pl, pb, pr) = kernel, stride, pads
    ho, wo = (h + pt + pb - kh_) // s + 1, (w + pl + pr - kw_) // s + 1
    hq, wq = ho + (kh_ - 1) // s, wo + (kw_ - 1) // s
    plane = hq * wq
    phase = (kh % s) * s + (kw % s)
    phases = int(phase.max()) + 1 if phase.size else 1
    offsets = (phase * planes + plane_of) * plane + (kh // s) * wq + kw // s
    size = padded_plane(phases * planes * plane + 2 * library().spconv_tile() + wq * (kh_ // s + 1) + 64)
    return Geometry(ho, wo, hq, wq, offsets.astype(np.int32), size, phases)


def slack_floats() -> int:
    """Floats a buffer needs past its end for a kernel to read it in place (a last tile's lanes, dropped)."""
    return 2 * library().spconv_tile()


def has_slack(x: np.ndarray) -> bool:
    """Whether `x` is contiguous float32 inside a numpy buffer that goes on for `slack_floats` after it."""
    base = x.base if isinstance(x.base, np.ndarray) else None
    if not (x.flags.c_contiguous and x.dtype == np.float32 and base is not None and base.ndim == 1
            and base.flags.c_contiguous):
        return False
    start, end = base.ctypes.data, base.ctypes.data + base.nbytes
    return start <= x.ctypes.data and x.ctypes.data + x.nbytes + 4 * slack_floats() <= end


def aligned_empty(floats: int) -> np.ndarray:
    """An uninitialised 1-D float32 array of `floats` starting on a 64-byte boundary (a cache line)."""
    raw = np.empty(floats + 16, dtype=np.float32)
    start = (-raw.ctypes.data % 64) // 4
    return raw[start:start + floats]


def empty_with_slack(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float32 array of `shape`, starting on a 64-byte boundary (so the kernels' full tiles can be
    written with stream stores), whose buffer goes on for `slack_floats` (zeroed)."""
    size = int(np.prod(shape))
    raw = np.empty(size + slack_floats() + 16, dtype=np.float32)
    start = (-raw.ctypes.data % 64) // 4
    raw[start + size:] = 0.0
    return raw[start:start + size].reshape(shape)


def sparse_conv(x: np.ndarray, packed: PackedConv, *, residual: np.ndarray | None = None, act: str | None = None,
                threads: int = 1, isa: int = 2, prepared: np.ndarray | None = None,
                out: np.ndarray | None = None, slack: bool | None = None) -> np.ndarray:
    """The convolution of `x` (N, C, H, W float32, contiguous) with the packed weights, plus bias, plus `residual`
    (N, Co, Ho, Wo), then `act` ('relu', 'silu' or None): only nonzero weights are multiplied. `prepared`
    ((N, image_floats) of `geometry`) and `out` are buffers to reuse: large fresh ones cost page faults. `slack`:
    the caller knows `x` has `slack_floats` past its end (None: check the numpy array)."""
    lib = library()
    n, c, h, w = x.shape
    if c != packed.in_channels:
        raise ValueError(f"input has {c} channels, the convolution takes {packed.in_channels}")
    g = packed.geometry(h, w)
    x = np.ascontiguousarray(x, dtype=np.float32)
    # no copy: a 1x1 layer's offsets are the input's planes already
    if packed.reads_input_as_is and (has_slack(x) if slack is None else slack):
        buf, stride = x, c * h * w
    else:
        buf = prepared if prepared is not None else aligned_empty(n * g.image_floats).reshape(n, g.image_floats)
        stride = g.image_floats
        lib.spconv_prepare(_ptr(x), c * h * w, h * w, n, c, h, w, packed.stride, packed.pads[0], packed.pads[1], g.hq,
                           g.wq, g.phases, _ptr(buf), g.image_floats, threads)
    y = out if out is not None else empty_with_slack((n, packed.out_channels, g.ho, g.wo))
    res = None if residual is None else np.ascontiguousarray(residual, dtype=np.float32)
    plane = g.ho * g.wo
    lib.spconv_run(_ptr(buf), stride, n, _ptr(packed.row_ptr), _ptr(g.offsets),
                   _ptr(packed.values), packed.out_channels, _ptr(packed.bias), g.ho, g.wq, g.wo, _ptr(y),
                   packed.out_channels * plane, plane, _ptr(res), packed.out_channels * plane, plane, ACTIVATIONS[act],
                   threads, isa)
    return y


@dataclass
class PackedLinear(_Nonzeros):
    """A linear layer's (out_features, in_features) weights as CSR over output features: nonzeros and their columns."""

    out_features: int
    in_features: int
    row_ptr: np.ndarray            # int32 (out_features + 1)
    columns: np.ndarray            # int32 (nnz)
    values: np.ndarray             # float32 (nnz)
    bias: np.ndarray | None

    @classmethod
    def from_dense(cls, weight: np.ndarray, bias: np.ndarray | None) -> "PackedLinear":
        rows, cols = np.nonzero(weight)
        return cls(weight.shape[0], weight.shape[1], _row_ptr(rows, weight.shape[0]), cols.astype(np.int32),
                   np.ascontiguousarray(weight[rows, cols], dtype=np.float32),
                   None if bias is None else np.ascontiguousarray(bias, dtype=np.float32))

    def to_dense(self) -> np.ndarray:
        dense = np.zeros((self.out_features, self.in_features), dtype=np.float32)
        dense[self.rows(), self.columns] = self.values
        return dense

    @property
    def weight_count(self) -> int:
        return self.out_features * self.in_features


def sparse_linear(x: np.ndarray, packed: PackedLinear, *, out: np.ndarray | None = None, threads: int = 1,
                  isa: int = 2) -> np.ndarray:
    """x (rows, in_features) times the packed weights' transpose, plus bias: only nonzero weights are multiplied."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != packed.in_features:
        raise ValueError(f"input of shape {x.shape}, the linear layer takes (rows, {packed.in_features})")
    y = out if out is not None else np.empty((x.shape[0], packed.out_features), dtype=np.float32)
    library().splinear_run(x.ctypes.data, x.shape[0], packed.in_features, packed.row_ptr.ctypes.data,
                           packed.columns.ctypes.data, packed.values.ctypes.data, packed.out_features,
                           _ptr(packed.bias), y.ctypes.data, threads, isa)
    return y


def pool_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int, ceil_mode: bool) -> int:
    """Output length of a max-pool along one axis (torch's and ONNX's rule: with ceil_mode a last window must start
    inside the input or its leading padding)."""
    span = size + pad_before + pad_after - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_before:
        out -= 1
    return out


def max_pool(x: np.ndarray, out: np.ndarray, *, kernel: tuple[int, int], stride: int, pads: tuple[int, int],
             threads: int) -> np.ndarray:
    """Max-pool the float32 (N, C, H, W) `x` into `out` (N, C, Ho, Wo; pads: top, left; padding never wins), both
    with contiguous rows (planes may be padded): the compiled kernel, vectorised, threads over planes."""
    n, c, h, w = x.shape
    ho, wo = out.shape[2:]
    (xs, xp), (ys, yp) = plane_strides(x), plane_strides(out)
    library().spconv_maxpool(x.ctypes.data, xs, xp, n, c, h, w, kernel[0], kernel[1], stride, pads[0], pads[1], ho,
                             wo, out.ctypes.data, ys, yp, threads)
    return out


def padded_plane(floats: int) -> int:
    """A plane of `floats` rounded up to whole cache lines (16 floats): the kernels' tiles then start on cache lines
    (bench/sparse_kernels.py: 1.27-1.33x on ResNet-50's 14 and 7 px 1x1 layers). Not to whole tiles: measured in
    the engine, planes of whole tiles made YOLOv5s 5% slower (its torch operators then read padded tensors)."""
    return -(-floats // 16) * 16


def zeros_with_padded_planes(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed float32 (N, C, H, W) array whose planes are `padded_plane` floats apart, on a 64-byte boundary, with
    `slack_floats` after its buffer (other shapes: contiguous, the same alignment and slack)."""
    if len(shape) != 4:
        flat = np.zeros(int(np.prod(shape)) + slack_floats() + 16, dtype=np.float32)
        start = (-flat.ctypes.data % 64) // 4
        return flat[start:start + int(np.prod(shape))].reshape(shape)
    n, c, h, w = shape
    plane = padded_plane(h * w)
    flat = np.zeros(n * c * plane + slack_floats() + 16, dtype=np.float32)
    start = (-flat.ctypes.data % 64) // 4
    return np.lib.stride_tricks.as_strided(flat[start:], shape, (4 * c * plane, 4 * plane, 4 * w, 4))


def plane_strides(x: np.ndarray) -> tuple[int, int]:
    """(image, plane) strides in floats of a float32 (N, C, H, W) array with contiguous rows; ValueError otherwise."""
    n, c, h, w = x.shape
    image, plane, row, col = (s // 4 for s in x.strides)
    if x.dtype != np.float32 or col != 1 or (row != w and h > 1) or plane < h * w or (image < c * plane and n > 1):
        raise ValueError(f"array of strides {x.strides} is not planes of contiguous rows")
    return image if n > 1 else c * plane, plane


class BoundConv:
    """A packed convolution bound to one input shape and layout: its geometry and every constant address computed
    once, so a call costs two foreign calls (the executor's hot path). The caller owns the buffers: `scratch` (at
    least `scratch_floats`, for the prepared input), the input and the output (`out_shape`), given by address with
    their (image, plane) strides in floats."""

    def __init__(self, packed: PackedConv, shape: tuple[int, int, int, int], *, x_strides: tuple[int, int],
                 act: str | None, threads: int, isa: int):
        n, c, h, w = shape
        self.packed, self.g, self.lib = packed, packed.geometry(h, w), library()
        g = self.g
        self.n = n
        self.out_shape = (n, packed.out_channels, g.ho, g.wo)
        self.scratch_floats = n * g.image_floats
        self.prepare_args = (*x_strides, n, c, h, w, packed.stride, packed.pads[0], packed.pads[1], g.hq, g.wq,
                             g.phases)
        self.in_place = packed.reads_input_as_is
        offsets = g.offsets
        if self.in_place and x_strides[1] != h * w:           # the input's planes padded: its own offsets
            offsets = (packed.channel.astype(np.int64) * x_strides[1]).astype(np.int32)
        self.offsets = offsets                                 # kept alive: the kernel reads it by address
        self.weights = (packed.row_ptr.ctypes.data, offsets.ctypes.data, packed.values.ctypes.data,
                        packed.out_channels, _ptr(packed.bias), g.ho, g.wq, g.wo)
        self.x_strides = x_strides
        # a tile read in place stays inside its plane when the plane holds whole tiles, else it needs slack past the end
        self.room_in_planes = x_strides[1] >= padded_plane(h * w)
        self.act_threads_isa = (ACTIVATIONS[act], threads, isa)
        self.threads = threads

    def __call__(self, x_address: int, *, x_has_slack: bool, residual: tuple[int, int, int] | None,
                 out: tuple[int, int, int], scratch_address: int) -> None:
        """Run on the input at `x_address` (shape and strides as bound) into `out` (address, image stride, plane
        stride), adding `residual` (address, image stride, plane stride) when given."""
        if self.in_place and (x_has_slack or self.room_in_planes):
            source, stride = x_address, self.x_strides[0]
        else:
            self.lib.spconv_prepare(x_address, *self.prepare_args, scratch_address, self.g.image_floats, self.threads)
            source, stride = scratch_address, self.g.image_floats
        self.lib.spconv_run(source, stride, self.n, *self.weights, *out, *(residual or (None, 0, 0)),
                            *self.act_threads_isa)
