"""The sparse engine: kernels equal torch's convolution for every layer kind, whole models equal ONNX Runtime, the
per-layer choice keeps a layer dense where sparse is slower, and a missing kernel library is one line."""
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import utils.onnx.kernels as kernels
from models import build_model
from utils.deploy import export_onnx
from utils.errors import UserError
from utils.onnx import SparseEngine
from utils.onnx.engines import available_engines, load_engine, missing
from utils.onnx.graph import SparseGraph
from utils.onnx.kernels import PackedConv, PackedLinear, sparse_conv, sparse_linear
from utils.onnx.layers import ConvLayer
from utils.sparsity import magnitude_prune_

from .models import real_statistics_, sparse_engine_forced

RTOL = 1e-4
ISAS = [0, 1, 2]      # scalar, AVX2+FMA, AVX-512 (capped at what this CPU runs)


def pruned_resnet_small(tmp_path: Path) -> Path:
    """A 90%-sparse resnet_small exported at 16 px."""
    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=10).eval()
    magnitude_prune_(model, 0.9)
    return export_onnx(model, tmp_path / "m.onnx", input_size=16)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


# (out, in, kernel, stride, pad, size, groups): 1x1, 3x3, strided 1x1 and 3x3, the 7x7 stem, depthwise, grouped,
# an odd size, and padding that leaves the last tile partly outside the grid
LAYERS = [(16, 8, 1, 1, 0, 7, 1), (16, 8, 3, 1, 1, 9, 1), (32, 16, 1, 2, 0, 14, 1), (32, 16, 3, 2, 1, 15, 1),
          (8, 3, 7, 2, 3, 32, 1), (16, 16, 3, 1, 1, 10, 16), (16, 16, 3, 2, 1, 11, 16), (24, 12, 3, 1, 1, 5, 3),
          (40, 24, 5, 1, 2, 13, 1)]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", LAYERS, ids=lambda s: "co{}_ci{}_k{}_s{}_p{}_hw{}_g{}".format(*s))
def test_each_layer_kind_equals_torch(shape, sparsity):
    co, ci, k, s, p, hw, groups = shape
    rng = np.random.default_rng(0)
    w = rng.standard_normal((co, ci // groups, k, k)).astype(np.float32)
    w[rng.random(w.shape) < sparsity] = 0.0
    b = rng.standard_normal(co).astype(np.float32)
    for batch in (1, 3):
        x = rng.standard_normal((batch, ci, hw, hw)).astype(np.float32)
        want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=s, padding=p,
                        groups=groups).numpy()
        packed = PackedConv.from_dense(w, b, stride=s, pads=(p, p, p, p), groups=groups)
        assert packed.nnz == int((w != 0).sum())
        for isa in ISAS:
            got = sparse_conv(x, packed, threads=2, isa=isa)
            assert got.shape == want.shape and relative_error(got, want) < RTOL, (isa, batch)


def test_fused_residual_and_activations_equal_torch():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((12, 6, 3, 3)).astype(np.float32) * (rng.random((12, 6, 3, 3)) < 0.2)
    x = rng.standard_normal((2, 6, 8, 8)).astype(np.float32)
    residual = rng.standard_normal((2, 12, 8, 8)).astype(np.float32)
    packed = PackedConv.from_dense(w, None, stride=1, pads=(1, 1, 1, 1))
    conv = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1)
    for act, fn in (("relu", torch.relu), ("silu", F.silu), (None, lambda t: t)):
        want = fn(conv + torch.from_numpy(residual)).numpy()
        assert relative_error(sparse_conv(x, packed, residual=residual, act=act, threads=2), want) < RTOL


def test_a_1x1_convolution_reads_a_buffer_with_slack_in_place():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    packed = PackedConv.from_dense(w, None, stride=1, pads=(0, 0, 0, 0))
    x = kernels.empty_with_slack((2, 4, 5, 5))
    x[...] = rng.standard_normal(x.shape)
    assert kernels.has_slack(x) and not kernels.has_slack(x.copy())
    want = F.conv2d(torch.from_numpy(x.copy()), torch.from_numpy(w)).numpy()
    assert relative_error(sparse_conv(x, packed, threads=2), want) < RTOL


@pytest.mark.parametrize("arch, size, classes", [("resnet_small", 32, 10), ("mobilenet", 64, 10), ("yolov5n", 64, 5)])
@pytest.mark.parametrize("sparsity", [0.0, 0.8, 0.95])
def test_whole_models_equal_onnx_runtime(tmp_path, arch, size, classes, sparsity):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=classes).eval()
    if sparsity:
        magnitude_prune_(model, sparsity, scope="layer")     # global pruning of a fresh net empties whole layers
    real_statistics_(model, size)
    path = export_onnx(model, tmp_path / f"{arch}.onnx", input_size=size)
    x = np.random.default_rng(0).random((2, 3, size, size)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert not np.allclose(want[0][0], want[0][1], rtol=1e-3)      # the outputs depend on the input
    for force in ("sparse", "dense", None):
        engine = sparse_engine_forced(path, force)
        for got, ref in zip(engine.run(x), want):
            assert got.shape == ref.shape and relative_error(got, ref) < RTOL, (force, relative_error(got, ref))
    layers = engine.report()
    assert layers and {r["runs"] for r in layers} <= {"sparse", "dense"}
    assert engine.precision == "fp32"


def test_the_per_layer_choice_keeps_a_layer_dense_where_sparse_is_slower(tmp_path, monkeypatch):
    path = pruned_resnet_small(tmp_path)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    fast = load_engine("sparse", path, threads=2)
    fast.run(x)
    slow_layer = fast.graph.conv_layers()[1].name
    real = ConvLayer.run_sparse

    def slower_in_one_layer(self, *args, **kwargs):
        if self.name == slow_layer:
            time.sleep(0.01)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ConvLayer, "run_sparse", slower_in_one_layer)
    engine = load_engine("sparse", path, threads=2)
    engine.run(x)
    runs = {r["layer"]: r for r in engine.report()}
    assert runs[slow_layer]["runs"] == "dense" and runs[slow_layer]["sparse_ms"] > runs[slow_layer]["dense_ms"]


def test_a_missing_kernel_library_is_one_line_and_the_other_engines_run(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "LIBRARY", tmp_path / "absent" / "libsparse_conv.so")
    kernels.library.cache_clear()
    try:
        why = missing("sparse")
        assert why is not None and "\n" not in why and "make kernels" in why
        with pytest.raises(UserError, match="make kernels"):
            load_engine("sparse", tmp_path / "any.onnx")
        assert "sparse" not in available_engines() and "onnxruntime" in available_engines()
    finally:
        kernels.library.cache_clear()


def test_the_whole_graph_runs_in_onnx_runtime_where_that_is_faster(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=10).eval()
    path = export_onnx(model, tmp_path / "dense.onnx", input_size=16)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    real = SparseGraph.run

    def slow(self, images):
        time.sleep(0.02)
        return real(self, images)

    monkeypatch.setattr(SparseGraph, "run", slow)
    engine = load_engine("sparse", path, threads=2)
    assert relative_error(engine.run(x)[0], want) < RTOL
    chosen = engine.whole_graph()[(1, 3, 16, 16)]
    assert chosen["runs"] == "onnxruntime" and chosen["sparse_ms"] > chosen["onnxruntime_ms"]
    monkeypatch.setattr(SparseGraph, "run", real)
    fast = load_engine("sparse", path, threads=2)
    fast.run(x)
    assert fast.whole_graph()[(1, 3, 16, 16)]["runs"] in ("sparse", "onnxruntime")


def test_a_batch_runs_in_chunks_of_one_image_per_thread_where_that_is_faster(tmp_path, monkeypatch):
    path = pruned_resnet_small(tmp_path)
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    real_graph, real_ort = SparseGraph.run, SparseEngine._run_onnxruntime

    def slow_whole_batch(self, images):          # a large batch slow in one piece (as when it leaves the caches)
        if len(images) > 2:
            time.sleep(0.03)
        return real_graph(self, images)

    def slow_ort(self, images):
        time.sleep(0.03)
        return real_ort(self, images)

    monkeypatch.setattr(SparseGraph, "run", slow_whole_batch)
    monkeypatch.setattr(SparseEngine, "_run_onnxruntime", slow_ort)
    engine = load_engine("sparse", path, threads=2)
    got = engine.run(x)[0]
    chosen = engine.whole_graph()[(5, 3, 16, 16)]
    assert chosen["runs"] == "sparse_chunks" and set(chosen) >= {"sparse_ms", "sparse_chunks_ms", "onnxruntime_ms"}
    assert got.shape == want.shape and relative_error(got, want) < RTOL
    assert relative_error(engine.run(x)[0], want) < RTOL
    engine.run(x[:2])                                # no larger than the threads: nothing to split
    assert "sparse_chunks_ms" not in engine.whole_graph()[(2, 3, 16, 16)]


@pytest.mark.parametrize("groups", [1, 4])
def test_packed_weights_give_the_dense_weight_back(groups):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 8 // groups, 3, 3)).astype(np.float32) * (rng.random((8, 8 // groups, 3, 3)) < 0.3)
    assert np.array_equal(PackedConv.from_dense(w, None, stride=1, pads=(1, 1, 1, 1), groups=groups).to_dense(), w)


def test_layers_that_run_sparse_keep_only_their_nonzeros(tmp_path):
    path = pruned_resnet_small(tmp_path)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    engine = load_engine("sparse", path, threads=2)
    engine.run(x)
    layers = engine.graph.conv_layers()
    assert all(layer.weight_name not in engine.graph.consts for layer in layers)
    assert all((layer.weight is None) == all(w == "sparse" for w in layer.choice.values()) for layer in layers)


def test_outputs_written_around_the_caches_equal_the_cached_ones():
    """Large outputs are stored with non-temporal stores: force that path on a small layer and compare."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((16, 8, 1, 1)).astype(np.float32) * (rng.random((16, 8, 1, 1)) < 0.3)
    x = rng.standard_normal((2, 8, 16, 16)).astype(np.float32)     # 256 positions: full, aligned tiles
    residual = rng.standard_normal((2, 16, 16, 16)).astype(np.float32)
    packed = PackedConv.from_dense(w, rng.standard_normal(16).astype(np.float32), stride=1, pads=(0, 0, 0, 0))
    want = {isa: sparse_conv(x, packed, residual=residual, act="relu", threads=2, isa=isa) for isa in ISAS}
    before = kernels.library().spconv_stream_bytes(1)
    try:
        for isa in ISAS:
            got = sparse_conv(x, packed, residual=residual, act="relu", threads=2, isa=isa)
            assert np.array_equal(got, want[isa]), isa
    finally:
        kernels.library().spconv_stream_bytes(before)
    assert kernels.empty_with_slack((3, 5)).ctypes.data % 64 == 0


def test_a_strided_1x1_layer_prepares_only_the_phase_it_reads():
    packed = PackedConv.from_dense(np.ones((4, 6, 1, 1), dtype=np.float32), None, stride=2, pads=(0, 0, 0, 0))
    stem = PackedConv.from_dense(np.ones((4, 3, 3, 3), dtype=np.float32), None, stride=2, pads=(1, 1, 1, 1))
    assert packed.geometry(8, 8).phases == 1 and stem.geometry(8, 8).phases == 4


# (kernel, stride, pads top/left/bottom/right, ceil_mode): ResNet's stem pool, no padding, asymmetric padding,
# ceil mode with a last window hanging over the edge, a window larger than the stride
POOLS = [(3, 2, (1, 1, 1, 1), 0), (2, 2, (0, 0, 0, 0), 0), (3, 2, (0, 0, 1, 1), 0), (3, 2, (1, 1, 1, 1), 1),
         (2, 2, (0, 0, 0, 0), 1), (5, 1, (2, 2, 2, 2), 0)]


@pytest.mark.parametrize("pool", POOLS, ids=lambda p: "k{}_s{}_p{}_ceil{}".format(p[0], p[1], "".join(map(str, p[2])),
                                                                               p[3]))
def test_max_pool_equals_onnx_runtime(tmp_path, pool):
    import onnx
    from onnx import TensorProto, helper

    k, s, pads, ceil = pool
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=list(pads),
                            ceil_mode=ceil)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "pool.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    x = np.random.default_rng(3).standard_normal((2, 3, 11, 12)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    graph_run = SparseGraph(path, threads=2)
    calls = []
    graph_run.compiled_ops["MaxPool"] = lambda a, t: calls.append(1) or graph_run._max_pool(a, t)
    got = graph_run.run(x)[0]
    assert calls and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    x[0, 1, 4, 5] = np.nan                  # a NaN in a window wins, as in torch (the engine's ops before the kernel)
    padded = F.pad(torch.from_numpy(x), (pads[1], pads[3], pads[0], pads[2]), value=float("-inf"))
    torch_nan = torch.isnan(F.max_pool2d(padded, k, s, ceil_mode=bool(ceil))).numpy()
    assert torch_nan.any() and np.array_equal(np.isnan(graph_run.run(x)[0]), torch_nan)


@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
def test_a_linear_layer_equals_torch(sparsity):
    rng = np.random.default_rng(6)
    w = rng.standard_normal((37, 70)).astype(np.float32)
    w[rng.random(w.shape) < sparsity] = 0.0
    b = rng.standard_normal(37).astype(np.float32)
    packed = PackedLinear.from_dense(w, b)
    assert packed.nnz == int((w != 0).sum()) and np.array_equal(packed.to_dense(), w)
    for rows in (1, 16, 19):
        x = rng.standard_normal((rows, 70)).astype(np.float32)
        want = F.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)).numpy()
        for isa in ISAS:
            assert relative_error(sparse_linear(x, packed, threads=2, isa=isa), want) < RTOL, (rows, isa)


@pytest.mark.parametrize("attrs", [{"transB": 1}, {"transB": 0, "alpha": 0.5, "beta": 2.0},
                                   {"transB": 1, "bias": False}], ids=["transB", "alpha_beta", "no_bias"])
def test_a_gemm_node_runs_as_a_sparse_linear_layer(tmp_path, attrs):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    attrs = dict(attrs)
    with_bias = attrs.pop("bias", True)
    w = rng.standard_normal((12, 20)).astype(np.float32) * (rng.random((12, 20)) < 0.2)    # (out, in)
    b = rng.standard_normal(12).astype(np.float32)
    inits = [numpy_helper.from_array(w if attrs["transB"] else w.T.copy(), "w")] + \
        ([numpy_helper.from_array(b, "b")] if with_bias else [])
    node = helper.make_node("Gemm", ["x", "w", "b"] if with_bias else ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], "fc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 12])], inits)
    path = tmp_path / "fc.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    x = rng.standard_normal((3, 20)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    for force in ("sparse", "dense", None):
        graph_run = SparseGraph(path, threads=2, force=force)
        assert [layer.kind for layer in graph_run.layers()] == ["linear"]
        assert relative_error(graph_run.run(x)[0], want) < RTOL, force
    row = graph_run.report()[0]
    assert row["kind"] == "linear" and row["sparsity"] == pytest.approx(0.8, abs=0.1)


@pytest.mark.parametrize("act", ["silu", "relu", None])
def test_activations_applied_in_registers_equal_torch(act):
    """Full tiles of a 1x1 layer are stored by the vector code, activation included: every instruction set, with
    outputs from large negative to large positive (SiLU's exp clamps)."""
    rng = np.random.default_rng(8)
    w = rng.standard_normal((8, 4, 1, 1)).astype(np.float32) * 30
    x = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    residual = rng.standard_normal((2, 8, 16, 16)).astype(np.float32)
    packed = PackedConv.from_dense(w, None, stride=1, pads=(0, 0, 0, 0))
    conv = F.conv2d(torch.from_numpy(x), torch.from_numpy(w)) + torch.from_numpy(residual)
    assert conv.min() < -100 and conv.max() > 100
    want = {"silu": F.silu, "relu": torch.relu, None: lambda t: t}[act](conv).numpy()
    for isa in ISAS:
        got = sparse_conv(x, packed, residual=residual, act=act, threads=2, isa=isa)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-5 * np.abs(want).max(), err_msg=str(isa))


@pytest.mark.parametrize("kernel, size", [(1, 7), (1, 14), (3, 7)])
def test_planes_padded_to_cache_lines_read_and_write_like_contiguous_ones(kernel, size):
    """The engine's buffers pad each plane to whole cache lines: a layer reads such input (1x1: in place), adds such a
    residual and writes such output, and equals torch on the valid positions; max-pool reads and writes them too."""
    from utils.onnx.kernels import BoundConv, max_pool, padded_plane, plane_strides, zeros_with_padded_planes

    rng = np.random.default_rng(9)
    w = rng.standard_normal((24, 16, kernel, kernel)).astype(np.float32) * (rng.random((24, 16, kernel, kernel)) < 0.3)
    b = rng.standard_normal(24).astype(np.float32)
    x, residual = zeros_with_padded_planes((2, 16, size, size)), zeros_with_padded_planes((2, 24, size, size))
    x[...] = rng.standard_normal(x.shape)
    residual[...] = rng.standard_normal(residual.shape)
    assert plane_strides(x)[1] == padded_plane(size * size) > size * size
    p = kernel // 2
    packed = PackedConv.from_dense(w, b, stride=1, pads=(p, p, p, p))
    want = torch.relu(F.conv2d(torch.from_numpy(x.copy()), torch.from_numpy(w), torch.from_numpy(b), padding=p)
                      + torch.from_numpy(residual.copy())).numpy()
    call = BoundConv(packed, x.shape, x_strides=plane_strides(x), act="relu", threads=2, isa=kernels.max_isa())
    out = zeros_with_padded_planes(call.out_shape)
    scratch = np.empty(call.scratch_floats + kernels.slack_floats(), dtype=np.float32)
    call(x.ctypes.data, x_has_slack=False, residual=(residual.ctypes.data, *plane_strides(residual)),
         out=(out.ctypes.data, *plane_strides(out)), scratch_address=scratch.ctypes.data)
    assert relative_error(out.copy(), want) < RTOL
    pooled = zeros_with_padded_planes((2, 24, size // 2, size // 2))
    max_pool(out, pooled, kernel=(2, 2), stride=2, pads=(0, 0), threads=2)
    np.testing.assert_array_equal(pooled.copy(), F.max_pool2d(torch.from_numpy(out.copy()), 2).numpy())


@pytest.mark.parametrize("shape", [(16, 8, 3, 1, 1, 20, 1), (16, 8, 3, 2, 1, 33, 1), (8, 3, 7, 2, 3, 32, 1)],
                         ids=["3x3", "3x3_stride2", "7x7_stem"])
def test_inputs_prepared_split_by_rows_or_by_channels_give_the_same_output(shape):
    """The prepared input is split between threads by rows where rows are a cache line or more (wq >= 16: these
    shapes), by channels otherwise; both splits give torch's convolution, batch 1 and 3."""
    co, ci, k, s, p, hw, groups = shape
    rng = np.random.default_rng(1)
    w = rng.standard_normal((co, ci, k, k)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0.0
    packed = PackedConv.from_dense(w, None, stride=s, pads=(p,) * 4)
    assert packed.geometry(hw, hw).wq >= 16
    lib = kernels.library()
    for batch in (1, 3):
        x = rng.standard_normal((batch, ci, hw, hw)).astype(np.float32)
        want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=s, padding=p).numpy()
        before = lib.spconv_prepare_by_rows(0)
        try:
            by_channels = sparse_conv(x, packed, threads=2)
        finally:
            lib.spconv_prepare_by_rows(before)
        by_rows = sparse_conv(x, packed, threads=2)
        assert relative_error(by_rows, want) < RTOL and relative_error(by_channels, want) < RTOL
        np.testing.assert_array_equal(by_rows, by_channels)
