"""The sparse engine's convolution kernels alone, on ResNet-50's convolution shapes: what a nonzero costs, and the
measurements behind the kernels' choices.

    python bench/sparse_kernels.py [--sparsity 0.9] [--batch 1] [--threads 2] [--rounds 5]
    SPARSE_ISA=avx2 python bench/sparse_kernels.py     # as a CPU without AVX-512 (and VNNI) would run them

Builds utils/onnx/kernels/sparse_conv.c with the system C compiler into a temporary folder, as `make kernels` does,
once per other tile size (-DTILE=16, 32, 128) and once with the tile loops left rolled (-DUNROLL=), then for each
distinct convolution of ResNet-50 (random weights at --sparsity, random input, bias and ReLU fused) times every
build, taking turns in each round (best of --rounds), and prints ms per call, GFLOP/s on the nonzero multiply-adds,
and, for the default build, ns per nonzero per tile (the unit of work: one nonzero's 4 vector multiply-adds over 64
positions) per thread. Totals weigh each shape by how often ResNet-50 has it: the network's convolution time per
pass. Then three comparisons on the default build:
outputs written with stream stores or not (1x1 layers at 56 and 28 px, batch 16, where outputs leave the caches),
1x1 layers at 14 and 7 px reading input planes of 196 and 49 floats as they are, or padded to 16 floats (planes
that start on a cache line), and the input of k x k and strided layers prepared by threads splitting it by rows (the
rows their tiles read next) or by channels. Last, the int8 kernels of QDQ files (kernels/sparse_qconv.c) against
the fp32 ones on the same weights, unstructured at --sparsity and block-4 at 80%, with their inputs' preparation
(quantize and pack 4 channels a word) timed apart.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.onnx.kernels import HERE, PackedConv, declare  # noqa: E402
from utils.onnx.kernels.quantized import PackedQConv, Quantizer  # noqa: E402

# (in, out, kernel, stride, input px, how many in ResNet-50): every convolution of torchvision's ResNet-50
SHAPES = [(3, 64, 7, 2, 224, 1), (64, 64, 1, 1, 56, 1), (64, 64, 3, 1, 56, 3), (64, 256, 1, 1, 56, 4),
          (256, 64, 1, 1, 56, 2), (256, 128, 1, 1, 56, 1), (128, 128, 3, 2, 56, 1), (256, 512, 1, 2, 56, 1),
          (128, 512, 1, 1, 28, 4), (512, 128, 1, 1, 28, 3), (128, 128, 3, 1, 28, 3), (512, 256, 1, 1, 28, 1),
          (256, 256, 3, 2, 28, 1), (512, 1024, 1, 2, 28, 1), (256, 1024, 1, 1, 14, 6), (1024, 256, 1, 1, 14, 5),
          (256, 256, 3, 1, 14, 5), (1024, 512, 1, 1, 14, 1), (512, 512, 3, 2, 14, 1), (1024, 2048, 1, 2, 14, 1),
          (512, 2048, 1, 1, 7, 3), (2048, 512, 1, 1, 7, 2), (512, 512, 3, 1, 7, 2)]
TILES = [64, 16, 32, 128]                     # the default first
# variant builds: label -> compiler flags; the default (`make kernels`) first
BUILDS = {**{f"tile {t}": [f"-DTILE={t}"] for t in TILES}, "64 rolled": ["-DUNROLL="]}
SOURCES = ("sparse_conv.c", "sparse_qconv.c")    # as the Makefile's KERNEL_SOURCES
# the instruction sets the kernels may use: the best this CPU has, capped by SPARSE_ISA=avx2|scalar as in the engine
ISA = {"scalar": 0, "avx2": 1}.get(os.environ.get("SPARSE_ISA", "").lower(), 2)
SLACK = 4096                                  # floats past every buffer: the largest tile reads past a grid's end


def build(label: str, flags: list[str], folder: Path) -> ctypes.CDLL:
    out = folder / f"libsparse_conv_{label.replace(' ', '_')}.so"
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O3", "-fopenmp", "-fPIC", "-shared", *flags, "-o", str(out),
                    *(str(HERE / f) for f in SOURCES), "-lm"], check=True)
    return declare(ctypes.CDLL(str(out)))


def buffer(floats: int, rng: np.random.Generator) -> np.ndarray:
    """Random floats starting on a 64-byte boundary, as the engine's own buffers do (kernels.empty_with_slack)."""
    raw = rng.standard_normal(floats + SLACK + 16).astype(np.float32)
    start = (-raw.ctypes.data % 64) // 4
    return raw[start:start + floats + SLACK]


class Layer:
    """One convolution shape with random weights: the buffers and a call that runs it in a given build."""

    def __init__(self, shape: tuple, *, sparsity: float, batch: int, threads: int, plane_floats: int | None = None,
                 weight: np.ndarray | None = None):
        ci, co, k, s, px, _ = shape
        rng = np.random.default_rng(0)
        w = rng.standard_normal((co, ci, k, k)).astype(np.float32)
        w[rng.random(w.shape) < sparsity] = 0.0
        w = w if weight is None else weight
        self.packed = PackedConv.from_dense(w, rng.standard_normal(co).astype(np.float32), stride=s,
                                            pads=(k // 2,) * 4)
        self.g = self.packed.geometry(px, px)
        self.in_place = self.packed.reads_input_as_is
        plane = plane_floats or px * px            # 1x1 in place: the planes' stride in the input buffer
        self.x_stride = ci * plane
        self.offsets = (self.packed.channel * plane).astype(np.int32) if self.in_place else self.g.offsets
        self.x = buffer(batch * self.x_stride, rng)
        self.prepared = buffer(batch * self.g.image_floats, rng)
        self.y = buffer(batch * co * self.g.ho * self.g.wo, rng)
        self.shape, self.batch, self.threads = shape, batch, threads
        self.macs = self.packed.nnz * self.g.ho * self.g.wo * batch
        self.visits = self.packed.nnz * -(-self.g.ho * self.g.wq // 64) * batch      # nonzero x tile of 64

    def run(self, lib: ctypes.CDLL) -> None:
        ci, co, k, s, px, _ = self.shape
        g, p = self.g, self.packed
        source, stride = self.x.ctypes.data, self.x_stride
        if not self.in_place:
            lib.spconv_prepare(self.x.ctypes.data, ci * px * px, px * px, self.batch, ci, px, px, s, p.pads[0],
                               p.pads[1], g.hq, g.wq, g.phases, self.prepared.ctypes.data, g.image_floats,
                               self.threads)
            source, stride = self.prepared.ctypes.data, g.image_floats
        lib.spconv_run(source, stride, self.batch, p.row_ptr.ctypes.data, self.offsets.ctypes.data,
                       p.values.ctypes.data, co, p.bias.ctypes.data, g.ho, g.wq, g.wo, self.y.ctypes.data,
                       co * g.ho * g.wo, g.ho * g.wo, None, 0, 0, 1, self.threads, ISA)


class QLayer:
    """The same shape as an int8 layer of a QDQ graph (kernels/sparse_qconv.c): int8 weights with a `mask`
    ('unstructured' or 'block4') at `sparsity`, input and output quantizers, bias and ReLU fused; and `fp32`, the
    fp32 kernels' layer on the same weights dequantized, to compare with."""

    def __init__(self, shape: tuple, *, mask: str, sparsity: float, batch: int, threads: int):
        ci, co, k, s, px, _ = shape
        rng = np.random.default_rng(0)
        w = rng.integers(-127, 128, (co, ci, k, k)).astype(np.int8)
        if mask == "block4":
            keep = np.repeat(rng.random((co, -(-ci // 4), k, k)) >= sparsity, 4, axis=1)[:, :ci]
        else:
            keep = rng.random(w.shape) >= sparsity
        w = (w * keep).astype(np.int8)
        self.fp32 = Layer(shape, sparsity=0.0, batch=batch, threads=threads, weight=w.astype(np.float32) * 0.01)
        self.packed = PackedQConv.from_int8(w, np.full(co, 0.01, np.float32), rng.standard_normal(co),
                                            stride=s, pads=(k // 2,) * 4, input_q=Quantizer(0.02, 0),
                                            output_q=Quantizer(0.05, 0))
        self.g = self.packed.geometry(px, px)
        self.x = buffer(batch * ci * px * px, rng)
        self.prepared = buffer(batch * self.g.image_floats, rng)
        self.y = buffer(batch * co * self.g.ho * self.g.wo, rng)
        self.shape, self.batch, self.threads = shape, batch, threads

    def prepare(self, lib: ctypes.CDLL) -> None:
        ci, co, k, s, px, _ = self.shape
        g, p = self.g, self.packed
        lib.spq_prepare(self.x.ctypes.data, ci * px * px, px * px, self.batch, ci, px, px, s, p.pads[0], p.pads[1],
                        g.hq, g.wq, g.phases, p.input_q.scale, p.input_q.zero_point, self.prepared.ctypes.data,
                        g.image_floats, self.threads, ISA)

    def kernel(self, lib: ctypes.CDLL) -> None:
        co, g, p = self.shape[1], self.g, self.packed
        lib.spq_run(self.prepared.ctypes.data, g.image_floats, self.batch, p.row_ptr.ctypes.data,
                    g.offsets.ctypes.data, p.words.ctypes.data, co, p.scale.ctypes.data, p.comp.ctypes.data,
                    p.bias.ctypes.data, p.output_q.scale, float(p.output_q.zero_point), g.ho, g.wq, g.wo,
                    self.y.ctypes.data, co * g.ho * g.wo, g.ho * g.wo, None, 0, 0, 1, self.threads, ISA)


def int8_against_fp32(lib: ctypes.CDLL, args: argparse.Namespace) -> None:
    """The int8 kernels against the fp32 ones on the same weights, per ResNet-50 shape, for unstructured masks at
    --sparsity and block-4 masks at 80%: ms per call (fp32: prepare included where the layer needs one; int8: its
    input's preparation and the kernel apart, and ns per block and tile of 64 per thread), and totals per pass."""
    isa = ["portable C", "", "AVX-512 VNNI"][lib.spq_isa(ISA)]
    for mask, sparsity in (("unstructured", args.sparsity), ("block4", 0.8)):
        print(f"\nint8 kernels ({isa}) against fp32 on the same weights, {mask} {sparsity:.0%}, batch {args.batch}, "
              f"ms per call:")
        totals = np.zeros(4)
        for shape in SHAPES:
            layer = QLayer(shape, mask=mask, sparsity=sparsity, batch=args.batch, threads=args.threads)
            ways = [lambda: layer.fp32.run(lib), lambda: layer.prepare(lib), lambda: layer.kernel(lib)]
            fp32, prepare, kernel = best_ms(layer, ways, args.rounds)
            totals += np.array([fp32, prepare, kernel, prepare + kernel]) * shape[5]
            int8 = prepare + kernel
            visits = layer.packed.blocks * -(-layer.g.ho * layer.g.wq // 64) * args.batch      # block x tile of 64
            print(f"  {name(shape):36} fp32 {fp32:7.3f}  int8 {int8:7.3f} (prepare {prepare:6.3f}, "
                  f"kernel {kernel:6.3f}, {kernel * 1e6 * args.threads / visits:5.2f} ns/visit)  blocks "
                  f"{layer.packed.block_density:4.0%}  ({fp32 / int8:.2f}x)")
        print(f"  {'ResNet-50 total (ms per pass)':36} fp32 {totals[0]:7.2f}  int8 {totals[3]:7.2f} (prepare "
              f"{totals[1]:6.2f}, kernel {totals[2]:6.2f})  ({totals[0] / totals[3]:.2f}x)")


def best_ms(layer: Layer, ways: list, rounds: int) -> list[float]:
    """Each way (a callable running the layer once) timed in turn, best mean per call over the rounds (ms)."""
    best = [float("inf")] * len(ways)
    for _ in range(rounds):
        for i, way in enumerate(ways):
            way()
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < 0.02:
                way()
                calls += 1
            best[i] = min(best[i], (time.perf_counter() - start) / calls * 1e3)
    return best


def name(shape: tuple) -> str:
    ci, co, k, s, px, n = shape
    return f"{ci:>4}->{co:<4} {k}x{k}/{s} @{px:<3} x{n}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        libs = {label: build(label, flags, Path(tmp)) for label, flags in BUILDS.items()}
        default = libs["tile 64"]
        print(f"ResNet-50 convolutions at {args.sparsity:.0%} sparsity, batch {args.batch}, {args.threads} threads, "
              f"{['scalar', 'AVX2+FMA', 'AVX-512'][default.spconv_isa(ISA)]}; ms per call by tile size "
              f"(64 = `make kernels`; '64 rolled': its tile loops left rolled, accumulators on the stack), GFLOP/s "
              f"and ns per nonzero-tile per thread for 64")
        print(f"{'shape (in->out k/stride @px xcount)':36}" + "".join(f"{label:>10}" for label in BUILDS)
              + f"{'GFLOP/s':>9}{'ns/visit':>9}")
        totals = dict.fromkeys(BUILDS, 0.0)
        for shape in SHAPES:
            layer = Layer(shape, sparsity=args.sparsity, batch=args.batch, threads=args.threads)
            times = best_ms(layer, [lambda lib=lib: layer.run(lib) for lib in libs.values()], args.rounds)
            for label, ms in zip(BUILDS, times):
                totals[label] += ms * shape[5]
            print(f"{name(shape):36}" + "".join(f"{ms:>10.3f}" for ms in times)
                  + f"{2 * layer.macs / times[0] / 1e6:>9.1f}{times[0] * 1e6 * args.threads / layer.visits:>9.2f}")
        print(f"{'ResNet-50 total (ms per pass)':36}" + "".join(f"{totals[b]:>10.2f}" for b in BUILDS))

        print("\nstream stores (outputs > a quarter of the L3) against normal stores, batch 16, ms per call:")
        for shape in [s for s in SHAPES if s[2] == 1 and s[3] == 1 and s[4] in (56, 28)]:
            layer = Layer(shape, sparsity=args.sparsity, batch=16, threads=args.threads)
            default_bytes = default.spconv_stream_bytes(0)
            never = lambda: (default.spconv_stream_bytes(1 << 62), layer.run(default))   # noqa: E731
            usual = lambda: (default.spconv_stream_bytes(default_bytes), layer.run(default))   # noqa: E731
            stream_ms, plain_ms = best_ms(layer, [usual, never], args.rounds)
            default.spconv_stream_bytes(default_bytes)
            print(f"  {name(shape):36} stream {stream_ms:8.3f}  normal {plain_ms:8.3f}  ({plain_ms / stream_ms:.2f}x)")

        print(f"\n1x1 layers reading planes as they are or padded to 16 floats, batch {args.batch}, ms per call:")
        for shape in [s for s in SHAPES if s[2] == 1 and s[3] == 1 and s[4] in (14, 7)]:
            plain = Layer(shape, sparsity=args.sparsity, batch=args.batch, threads=args.threads)
            padded = Layer(shape, sparsity=args.sparsity, batch=args.batch, threads=args.threads,
                           plane_floats=-(-shape[4] ** 2 // 16) * 16)
            as_is, aligned = best_ms(plain, [lambda: plain.run(default), lambda: padded.run(default)], args.rounds)
            print(f"  {name(shape):36} as is {as_is:8.3f}  padded {aligned:8.3f}  ({as_is / aligned:.2f}x)")

        print(f"\nk x k and strided layers with their input prepared split between threads by rows (as the tiles "
              f"that read it) or by channels, batch {args.batch}, ms per call, prepare included:")
        totals = [0.0, 0.0]
        for shape in [s for s in SHAPES if s[2] > 1 or s[3] > 1]:
            layer = Layer(shape, sparsity=args.sparsity, batch=args.batch, threads=args.threads)
            rows = lambda: (default.spconv_prepare_by_rows(1), layer.run(default))   # noqa: E731
            channels = lambda: (default.spconv_prepare_by_rows(0), layer.run(default))   # noqa: E731
            rows_ms, channels_ms = best_ms(layer, [rows, channels], args.rounds)
            default.spconv_prepare_by_rows(1)
            totals[0] += rows_ms * shape[5]
            totals[1] += channels_ms * shape[5]
            print(f"  {name(shape):36} rows {rows_ms:8.3f}  channels {channels_ms:8.3f}  "
                  f"({channels_ms / rows_ms:.2f}x)")
        print(f"  {'ResNet-50, these layers (ms per pass)':36} rows {totals[0]:8.2f}  channels {totals[1]:8.2f}  "
              f"({totals[1] / totals[0]:.2f}x)")

        int8_against_fp32(default, args)

if __name__ == "__main__":
    main()
