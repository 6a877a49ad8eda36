"""The sparse engine on INT8 (QDQ) files: the int8 kernels compute the QDQ graph's numbers for every layer kind, a
QDQ graph's convolutions become int8 layers, and whole QAT models run int8 / sparse / dense as ONNX Runtime's
reference operators do."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from models import build_model
from policies.qat.modules import calibrated_qat_
from utils.deploy import export_onnx
from utils.onnx import SparseEngine
from utils.onnx.engines import load_engine
from utils.onnx.graph import SparseGraph
from utils.onnx.kernels.quantized import PackedQConv, Quantizer, qisa, sparse_qconv
from utils.onnx.qlayers import QConvLayer, fake_quantize
from utils.sparsity import magnitude_prune_
from utils.sparsity.structured import make_masks, parse_mask_type

from .models import real_statistics_

ISAS = sorted({0, qisa(2)})           # portable C, and AVX-512 VNNI where this CPU has it

# (out, in, kernel, stride, pad, size): 1x1, 3x3, strided, the 7x7 stem on 3 channels (a partial block), 5x5 on
# channels that are not a multiple of 4, and a grid whose last tile is partly outside
LAYERS = [(16, 8, 1, 1, 0, 7), (16, 8, 3, 1, 1, 9), (32, 16, 1, 2, 0, 14), (32, 16, 3, 2, 1, 15), (8, 3, 7, 2, 3, 32),
          (20, 30, 5, 1, 2, 13), (64, 64, 3, 1, 1, 10)]


def reference(x: np.ndarray, w: np.ndarray, w_scale: np.ndarray, bias: np.ndarray, *, stride: int, pad: int,
              input_q: Quantizer, output_q: Quantizer | None, residual: np.ndarray | None,
              act: str | None) -> np.ndarray:
    """The QDQ graph's numbers in float64: dequantized input and weights, convolution, bias, the output's
    quantizer, the residual, the activation."""
    xq = fake_quantize(torch.from_numpy(x), input_q).double()
    wq = torch.from_numpy(w.astype(np.float64) * w_scale.astype(np.float64)[:, None, None, None])
    y = F.conv2d(xq, wq, torch.from_numpy(bias).double(), stride=stride, padding=pad).float()
    if output_q is not None:
        y = fake_quantize(y, output_q)
    if residual is not None:
        y = y + torch.from_numpy(residual)
    return (torch.relu(y) if act == "relu" else F.silu(y) if act == "silu" else y).numpy()


def assert_qdq_equal(got: np.ndarray, want: np.ndarray, step: float) -> None:
    """Equal up to fp32 rounding: where a value lands within a rounding error of a half step it may move by one
    step of the output's quantizer (here: the kernels multiply by 1 / scale where ONNX divides), nowhere more, and
    rarely."""
    diff = np.abs(got - want)
    assert got.shape == want.shape
    assert diff.max() <= step * 1.01 + 1e-4 * max(1.0, np.abs(want).max()), diff.max()
    assert (diff > 1e-4 * (1 + np.abs(want))).mean() < 1e-3


@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("shape", LAYERS, ids=lambda s: "co{}_ci{}_k{}_s{}_p{}_hw{}".format(*s))
def test_each_layer_kind_computes_the_qdq_graphs_numbers(shape, sparsity):
    co, ci, k, s, p, hw = shape
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (co, ci, k, k)).astype(np.int8)
    w[rng.random(w.shape) < sparsity] = 0
    w_scale = (rng.random(co) * 0.01 + 1e-3).astype(np.float32)       # one scale per output channel
    bias = rng.standard_normal(co).astype(np.float32)
    input_q = Quantizer(0.05, int(rng.integers(0, 256)))
    for batch, output_q, with_residual, act in ((1, Quantizer(0.1, 100), False, "relu"), (3, None, True, "silu"),
                                                (2, Quantizer(0.02, 0), True, None)):
        x = (rng.standard_normal((batch, ci, hw, hw)) * 3).astype(np.float32)
        packed = PackedQConv.from_int8(w, w_scale, bias, stride=s, pads=(p, p, p, p), input_q=input_q,
                                       output_q=output_q)
        assert packed.nonzeros == int(np.count_nonzero(w))
        ho = (hw + 2 * p - k) // s + 1
        residual = rng.standard_normal((batch, co, ho, ho)).astype(np.float32) if with_residual else None
        want = reference(x, w, w_scale, bias, stride=s, pad=p, input_q=input_q, output_q=output_q,
                         residual=residual, act=act)
        for isa in ISAS:
            got = sparse_qconv(x, packed, residual=residual, act=act, threads=2, isa=isa)
            assert_qdq_equal(got, want, output_q.scale if output_q else 0.0)


def test_blocks_hold_four_input_channels_and_only_nonzero_blocks_are_kept():
    w = np.zeros((2, 8, 1, 1), dtype=np.int8)
    w[0, 5, 0, 0] = -3                         # block 1 of channel 0, byte 1
    w[1, 0, 0, 0], w[1, 3, 0, 0] = 7, 1        # block 0 of channel 1, bytes 0 and 3
    packed = PackedQConv.from_int8(w, np.ones(2, np.float32), None, stride=1, pads=(0, 0, 0, 0),
                                   input_q=Quantizer(1.0, 10), output_q=None)
    assert packed.blocks == 2 and list(packed.row_ptr) == [0, 1, 2] and list(packed.group) == [1, 0]
    assert list(packed.words.view(np.int8).reshape(2, 4)[0]) == [0, -3, 0, 0]
    assert list(packed.words.view(np.int8).reshape(2, 4)[1]) == [7, 0, 0, 1]
    assert list(packed.comp) == [10 * -3, 10 * 8]                 # zero point x the weights' sum
    assert packed.block_density == 2 / 4 and packed.sparsity == 1 - 3 / 16


def qdq_conv_model(path: Path, *, activation_type: int, per_channel: bool) -> Path:
    """input -> QuantizeLinear -> DequantizeLinear -> Conv (DequantizeLinear of int8 weights, bias) -> Cast ->
    QuantizeLinear -> DequantizeLinear -> Relu, written by hand: int8 or uint8 activations, one weight scale or one
    per output channel (the forms other exporters write)."""
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (12, 6, 3, 3)).astype(np.int8)
    w[rng.random(w.shape) < 0.7] = 0
    zero = np.array(-5 if activation_type == TensorProto.INT8 else 120,
                    dtype=np.int8 if activation_type == TensorProto.INT8 else np.uint8)
    scale = (rng.random(12) * 0.01 + 1e-3).astype(np.float32) if per_channel else np.array(0.004, np.float32)
    inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(scale, "w_scale"),
             numpy_helper.from_array(np.zeros(12 if per_channel else (), np.int8), "w_zero"),
             numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "bias"),
             numpy_helper.from_array(np.array(0.03, np.float32), "x_scale"), numpy_helper.from_array(zero, "x_zero"),
             numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"), numpy_helper.from_array(zero, "y_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0),
             helper.make_node("Conv", ["xd", "w", "bias"], ["y"], pads=[1, 1, 1, 1], strides=[1, 1]),
             helper.make_node("Cast", ["y"], ["yc"], to=TensorProto.FLOAT),
             helper.make_node("QuantizeLinear", ["yc", "y_scale", "y_zero"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["yd"]),
             helper.make_node("Relu", ["yd"], ["output"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           [None, 6, 10, 10])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 12, 10, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def ort_reference(path: Path, x: np.ndarray) -> list[np.ndarray]:
    """ONNX Runtime with its graph optimisations off: the QDQ operators as written, in fp32."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


@pytest.mark.parametrize("activation_type", [TensorProto.UINT8, TensorProto.INT8], ids=["uint8", "int8"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_a_handwritten_qdq_convolution_becomes_one_int8_layer(tmp_path, activation_type, per_channel):
    path = qdq_conv_model(tmp_path / "q.onnx", activation_type=activation_type, per_channel=per_channel)
    x = np.random.default_rng(0).standard_normal((2, 6, 10, 10)).astype(np.float32)
    want = ort_reference(path, x)[0]
    for force in ("int8", "sparse", "dense"):
        graph = SparseGraph(path, threads=2, force=force)
        assert [type(layer) for layer in graph.layers()] == [QConvLayer]
        assert [s[1].op_type for s in graph.steps if s[0] == "op"] == []      # every node fused into the layer
        assert_qdq_equal(graph.run(x)[0], want, 0.05)


def qat_model(arch: str, size: int, sparsity: float, mask: str) -> torch.nn.Module:
    """A pruned model with fake quantization, observers calibrated on random batches, then frozen (as
    bench/deploy.py's QAT twins)."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10).eval()
    if sparsity and mask == "unstructured":
        magnitude_prune_(model, sparsity, scope="layer")
    elif sparsity:
        params = {n: p for n, p in model.named_parameters() if p.dim() == 4 and p.shape[1] % 4 == 0}
        with torch.no_grad():
            for name, m in make_masks(params, sparsity, mask_type=parse_mask_type(mask), global_scope=False).items():
                params[name].mul_(m)
    real_statistics_(model, size)
    return calibrated_qat_(model, (torch.rand(4, 3, size, size) for _ in range(2)))


@pytest.mark.parametrize("arch, size, sparsity, mask", [
    ("resnet_small", 32, 0.0, "unstructured"), ("resnet_small", 32, 0.8, "unstructured"),
    ("resnet_small", 32, 0.8, "block4"), ("mobilenet", 64, 0.8, "unstructured"), ("yolov5n", 64, 0.8, "unstructured")])
def test_whole_qat_models_run_as_onnx_runtimes_reference(tmp_path, arch, size, sparsity, mask):
    """Whole QAT models (depthwise layers stay fp32 layers with their quantizers as operators; YOLOv5's SiLU is
    fused): every way as near ONNX Runtime's reference operators as ONNX Runtime's own INT8 execution is. In a
    quantized net a value that fp32 rounding moves across a half step moves by a step, and the next layers carry it:
    on these small random nets ONNX Runtime's INT8 kernels land up to 45% of the output range from its reference."""
    path = export_onnx(qat_model(arch, size, sparsity, mask), tmp_path / "q.onnx", input_size=size)
    x = np.random.default_rng(0).random((2, 3, size, size)).astype(np.float32)
    want = ort_reference(path, x)
    assert not np.allclose(want[0][0], want[0][1], rtol=1e-3)           # the outputs depend on the input
    own = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    bound = [max(0.05 * np.abs(w).max(), 1.2 * np.abs(o - w).max()) for o, w in zip(own, want)]
    for force in ("int8", "sparse", "dense", None):
        SparseEngine.force = force
        try:
            engine = load_engine("sparse", path, threads=2)
        finally:
            SparseEngine.force = None
        for got, ref, most in zip(engine.run(x), want, bound):
            assert got.shape == ref.shape and np.abs(got - ref).max() <= most, (force, np.abs(got - ref).max(), most)
    assert engine.precision == "int8+fp32"
    layers = engine.report()
    assert "convolution int8" in {r["kind"] for r in layers} and {r["runs"] for r in layers} <= {"int8", "sparse",
                                                                                                  "dense"}
    assert all(set(r) >= {"int8_ms", "sparse_ms", "dense_ms"} for r in layers if r["kind"] == "convolution int8")


def test_resnet_small_int8_keeps_the_class(tmp_path):
    """Where ONNX Runtime's own INT8 execution keeps its reference's classes, every way of the engine does."""
    path = export_onnx(qat_model("resnet_small", 32, 0.8, "block4"), tmp_path / "q.onnx", input_size=32)
    x = np.random.default_rng(1).random((8, 3, 32, 32)).astype(np.float32)
    want = ort_reference(path, x)[0]
    own = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert (own.argmax(1) == want.argmax(1)).all()
    for force in ("int8", "sparse", "dense"):
        assert (SparseGraph(path, threads=2, force=force).run(x)[0].argmax(1) == want.argmax(1)).all(), force


def test_without_vnni_the_calibration_leaves_the_int8_kernels_out(tmp_path, monkeypatch):
    """Portable C int8 blocks are far slower than the fp32 kernels: a CPU without AVX-512 VNNI never calibrates
    them (the layer runs its fp32 ways), and its numbers stay the QDQ graph's."""
    path = qdq_conv_model(tmp_path / "q.onnx", activation_type=TensorProto.UINT8, per_channel=True)
    x = np.random.default_rng(0).standard_normal((2, 6, 10, 10)).astype(np.float32)
    monkeypatch.setenv("SPARSE_ISA", "avx2")
    graph = SparseGraph(path, threads=2)
    assert not graph.int8_vnni
    got = graph.run(x)[0]
    assert {way for r in graph.report() for way in r if way.endswith("_ms")} == {"sparse_ms", "dense_ms"}
    assert_qdq_equal(got, ort_reference(path, x)[0], 0.05)
