"""An ONNX graph run with sparse convolutions where they are faster: the sparse engine's executor.

Each Conv (with what follows it fused: a residual Add, Relu, or SiLU's Sigmoid + Mul) runs either in the compiled
sparse kernels (utils.onnx.kernels: only nonzero weights are multiplied) or as torch's dense convolution, whichever
a calibration on the first input of each shape measured faster (per layer; `force` pins every layer for tests).
The other supported operators run as torch functions on the same tensors. Nodes this executor does not know, and
everything that depends on them (a detector's box decoding), run in an ONNX Runtime session of that part of the
graph, so every exported model runs; the report says which layers ran sparse and how long each took.

INT8 (QDQ) files run here too: the DequantizeLinear of each weight is folded at load, and a Conv between its
input's QuantizeLinear -> DequantizeLinear and its output's becomes one int8 layer (utils.onnx.qlayers: int8 kernels,
fp32 kernels or torch, calibrated the same way); the quantizers elsewhere run as operators. Activations stay fp32
between layers, as the QDQ graph defines them.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from utils.onnx.kernels import PackedConv, PackedLinear, max_isa, max_pool, pool_size
from utils.onnx.kernels.quantized import PackedQConv, Quantizer, qisa
from utils.onnx.layers import Buffers, ConvLayer, LinearLayer, planes
from utils.onnx.ops import OPS, SUPPORTED_IF, attributes
from utils.onnx.qlayers import QConvLayer

log = logging.getLogger(__name__)

Layer = ConvLayer | LinearLayer | QConvLayer

CALIBRATION_RUNS = 3


class SparseGraph:
    """An fp32 ONNX file ready to run: conv layers packed, the rest as torch ops or an ONNX Runtime tail."""

    def __init__(self, path: str | Path, *, threads: int | None = None, force: str | None = None):
        import onnx
        from onnx import numpy_helper

        self.threads = threads or torch.get_num_threads()
        self.isa, self.force = max_isa(), force
        # the int8 kernels are a way only with VNNI: in portable C they ran 8-20x slower than the fp32 kernels
        # (bench/sparse_kernels.py with SPARSE_ISA=avx2), so calibrating them would only cost time (force still can)
        self.int8_vnni = qisa(self.isa) == 2
        model = onnx.load(str(path))
        graph = model.graph
        self.consts = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
        for node in graph.node:         # constants, and Identity copies of them (the exporter shares weights so)
            if node.op_type == "Constant":
                self.consts[node.output[0]] = torch.from_numpy(numpy_helper.to_array(attributes(node)["value"]).copy())
            elif node.op_type == "Identity" and node.input[0] in self.consts:
                self.consts[node.output[0]] = self.consts[node.input[0]]
        self.int8_weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}    # folded name -> (int8 values, scales)
        self._fold_dequantized_constants(graph.node)
        self.input = graph.input[0].name
        self.outputs = [o.name for o in graph.output]
        nodes = [n for n in graph.node if not all(o in self.consts for o in n.output)]
        here, tail = self._split(nodes)
        self.steps = self._plan(here)
        self.int8_weights.clear()                 # packed into the int8 layers
        self.tail = self._tail_session(model, tail) if tail else None
        self.memory = Buffers()
        # operators with a compiled kernel besides Conv (None from one: these attributes or inputs are not its own)
        self.compiled_ops: dict[str, Callable[..., torch.Tensor | None]] = {"MaxPool": self._max_pool}
        self._liveness()
        for layer in self.layers():           # the packed nonzeros replace the dense initializer
            self.consts.pop(layer.weight_name, None)

    # ------------------------------------------------------------------ building

    def _fold_dequantized_constants(self, nodes) -> None:
        """A DequantizeLinear of constants (a QDQ graph's weights) becomes a constant; int8 ones with zero point 0
        and one scale per tensor or per output channel are kept as int8 too (for the int8 kernels)."""
        for node in nodes:
            if node.op_type != "DequantizeLinear" or not all(i in self.consts for i in node.input if i):
                continue
            a = attributes(node)
            if not SUPPORTED_IF["DequantizeLinear"](a):
                continue
            inputs = [self.consts[i] if i else None for i in node.input]
            self.consts[node.output[0]] = OPS["DequantizeLinear"](a, *inputs)
            q, scale = inputs[0], inputs[1]
            zero = inputs[2] if len(inputs) > 2 else None
            per_channel = scale.numel() == 1 or (scale.numel() == q.shape[0] and a.get("axis", 1) in (0, -q.dim()))
            if q.dtype == torch.int8 and q.dim() == 4 and per_channel and (zero is None or not zero.any()):
                self.int8_weights[node.output[0]] = (q.numpy(), np.broadcast_to(scale.float().numpy().reshape(-1),
                                                                                (q.shape[0],)).copy())

    def _split(self, nodes: list) -> tuple[list, list]:
        """(nodes run here, nodes run by ONNX Runtime): an unknown operator and all that depends on it go there."""
        away: set[str] = set()
        here, tail = [], []
        for node in nodes:
            known = node.op_type == "Conv" or (node.op_type in OPS
                                               and SUPPORTED_IF.get(node.op_type, lambda a: True)(attributes(node)))
            if not known or any(i in away for i in node.input):
                tail.append(node)
                away.update(node.output)
            else:
                here.append(node)
        return here, tail

    def _plan(self, nodes: list) -> list:
        consumers: dict[str, list] = {}
        for node in nodes:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        graph_outputs = set(self.outputs)

        def only_use(name: str):
            users = consumers.get(name, [])
            return users[0] if len(users) == 1 and name not in graph_outputs else None

        emit_at: dict[int, Layer] = {}   # a fused conv runs where its last node stood
        skip: set[int] = set()
        taken: set[int] = set()                 # a node is fused into one conv only (an Add has two conv inputs)

        def free_use(name: str):
            user = only_use(name)
            return None if user is None or id(user) in taken else user

        producer = {o: n for n in nodes for o in n.output}
        for node in nodes:
            if node.op_type == "Conv":
                quantized = self._qconv(node, free_use, consumers, producer)
                layer, absorbed = quantized or self._conv(node, free_use, consumers)
                if quantized:                     # its input's QuantizeLinear -> DequantizeLinear, before it
                    before = [producer[node.input[0]], producer[producer[node.input[0]].input[0]]]
                    skip.update(id(n) for n in before)
                    taken.update(id(n) for n in before)
                taken.update(id(n) for n in absorbed)
                chain = [node, *absorbed]
                emit_at[id(chain[-1])] = layer
                skip.update(id(n) for n in chain[:-1])
            elif node.op_type == "Gemm" and (linear := self._linear(node)) is not None:
                emit_at[id(node)] = linear
            elif node.op_type == "MatMul" and (linear := self._matmul(node)) is not None:
                emit_at[id(node)] = linear
        steps: list = []
        for node in nodes:
            if id(node) in emit_at:
                steps.append(("layer", emit_at[id(node)]))
            elif id(node) not in skip:
                a = attributes(node)
                if node.op_type == "Split":
                    a.setdefault("num_outputs", len(node.output))
                steps.append(("op", node, a))
        return steps

    def _conv(self, node, only_use: Callable, consumers: dict) -> tuple[ConvLayer, list]:
        a = attributes(node)
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise NotImplementedError(f"{node.name}: dilated convolutions are not supported by the sparse engine")
        strides = a.get("strides", [1, 1])
        if strides[0] != strides[1]:
            raise NotImplementedError(f"{node.name}: unequal strides {strides}")
        weight = self.consts[node.input[1]].float()
        bias = self.consts[node.input[2]].float() if len(node.input) > 2 and node.input[2] else None
        pads = a.get("pads", [0, 0, 0, 0])
        packed = PackedConv.from_dense(weight.numpy(), None if bias is None else bias.numpy(), stride=strides[0],
                                       pads=(pads[0], pads[1], pads[2], pads[3]), groups=a.get("group", 1))
        out, absorbed, residual, act = self._fused_after(node.output[0], only_use, consumers)
        inputs = [node.input[0], *residual]
        return ConvLayer(node.name or node.output[0], inputs, out, packed, weight, bias, act,
                         weight_name=node.input[1]), absorbed

    def _fused_after(self, out: str, only_use: Callable, consumers: dict) -> tuple[str, list, list[str], str | None]:
        """What a convolution whose output is `out` absorbs after it: a residual Add, then Relu or SiLU (Sigmoid +
        Mul). Returns (the last output, the nodes absorbed, the residual input if any, the activation)."""
        absorbed, residual, act = [], [], None
        nxt = only_use(out)
        if nxt is not None and nxt.op_type == "Add" and out in nxt.input:
            other = nxt.input[1] if nxt.input[0] == out else nxt.input[0]
            if other not in self.consts:
                residual.append(other)
                absorbed.append(nxt)
                out = nxt.output[0]
                nxt = only_use(out)
        if nxt is not None and nxt.op_type == "Relu":
            act, out = "relu", nxt.output[0]
            absorbed.append(nxt)
        elif nxt is None and len(consumers.get(out, [])) == 2 and out not in self.outputs:
            sigmoid = next((n for n in consumers[out] if n.op_type == "Sigmoid"), None)
            mul = only_use(sigmoid.output[0]) if sigmoid is not None else None
            if mul is not None and mul.op_type == "Mul" and mul in consumers[out] \
                    and set(mul.input) == {out, sigmoid.output[0]}:
                act, out = "silu", mul.output[0]
                absorbed += [sigmoid, mul]
        return out, absorbed, residual, act

    def _quantizer(self, node) -> Quantizer | None:
        """The uint8 view of a QuantizeLinear/DequantizeLinear node with one constant scale and a uint8 or int8 zero
        point (None otherwise)."""
        a = attributes(node)
        scale = self.consts.get(node.input[1])
        zero = self.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None or scale.numel() != 1 or not SUPPORTED_IF[node.op_type](a) \
                or (len(node.input) > 2 and node.input[2] and zero is None):
            return None
        if zero is None or zero.dtype == torch.uint8:
            return Quantizer(float(scale.reshape(())), 0 if zero is None else int(zero.reshape(())))
        if zero.dtype == torch.int8:
            return Quantizer(float(scale.reshape(())), int(zero.reshape(())) + 128)
        return None

    def _qconv(self, node, only_use: Callable, consumers: dict, producer: dict) -> tuple[QConvLayer, list] | None:
        """A Conv of a QDQ graph as one int8 layer: its input from QuantizeLinear -> DequantizeLinear (each used
        only there), int8 weights, groups 1; the output's Cast -> QuantizeLinear -> DequantizeLinear absorbed when
        present, then a residual Add and the activation. None where the pattern does not hold (the Conv then runs
        as an fp32 layer on the dequantized weights, the quantizers as operators)."""
        a = attributes(node)
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if (q is None or q.op_type != "QuantizeLinear" or node.input[1] not in self.int8_weights
                or a.get("group", 1) != 1 or only_use(dq.output[0]) is not node or only_use(q.output[0]) is not dq):
            return None
        input_q = self._quantizer(q)
        if input_q is None or input_q != self._quantizer(dq):
            return None
        fp32, _ = self._conv(node, lambda name: None, {})          # the dequantized weights, nothing fused
        out, absorbed, output_q = node.output[0], [], None
        cast, nxt = None, only_use(out)
        if nxt is not None and nxt.op_type == "Cast" and SUPPORTED_IF["Cast"](attributes(nxt)):
            cast, nxt = nxt, only_use(nxt.output[0])
        after = only_use(nxt.output[0]) if nxt is not None and nxt.op_type == "QuantizeLinear" else None
        if after is not None and after.op_type == "DequantizeLinear" and self._quantizer(nxt) is not None \
                and self._quantizer(nxt) == self._quantizer(after):
            output_q, out = self._quantizer(nxt), after.output[0]
            absorbed = [n for n in (cast, nxt, after) if n is not None]
        out, more, residual, act = self._fused_after(out, only_use, consumers)
        weight, scales = self.int8_weights[node.input[1]]
        p = fp32.packed
        packed = PackedQConv.from_int8(weight, scales, p.bias, stride=p.stride, pads=p.pads, input_q=input_q,
                                       output_q=output_q)
        layer = QConvLayer(fp32.name, [q.input[0], *residual], out, packed, fp32, act, weight_name=node.input[1])
        return layer, [*absorbed, *more]

    def _linear(self, node) -> LinearLayer | None:
        """A Gemm with constant 2-D weights and a constant per-output bias (or none) as a layer; None otherwise."""
        a = attributes(node)
        weight = self.consts.get(node.input[1])
        bias_name = node.input[2] if len(node.input) > 2 else ""
        bias = self.consts.get(bias_name) if bias_name else None
        if a.get("transA", 0) or weight is None or weight.dim() != 2 or (bias_name and bias is None):
            return None
        weight = (weight if a.get("transB", 0) else weight.t()).float() * a.get("alpha", 1.0)
        if bias is not None:
            if bias.numel() != weight.shape[0]:
                return None                               # a bias per row as well: the torch op does it
            bias = bias.float().reshape(-1) * a.get("beta", 1.0)
        weight = weight.contiguous()
        packed = PackedLinear.from_dense(weight.numpy(), None if bias is None else bias.numpy())
        return LinearLayer(node.name or node.output[0], [node.input[0]], node.output[0], packed, weight, bias,
                           weight_name=node.input[1])

    def _matmul(self, node) -> LinearLayer | None:
        """A MatMul of activations by a constant 2-D weight (K, N) -- how a Linear layer on tokens exports, e.g. a
        transformer's qkv, proj, fc1, fc2 -- as a layer over the rows of its input; None otherwise (q @ k^T)."""
        weight = self.consts.get(node.input[1])
        if weight is None or weight.dim() != 2 or node.input[0] in self.consts:
            return None
        weight = weight.t().float().contiguous()                          # (N, K): a linear layer's layout
        packed = PackedLinear.from_dense(weight.numpy(), None)
        return LinearLayer(node.name or node.output[0], [node.input[0]], node.output[0], packed, weight, None,
                           weight_name=node.input[1])

    def _tail_session(self, model, tail: list):
        import onnx
        import onnxruntime as ort

        produced_here = {self.input} | {o for s in self.steps for o in _step_outputs(s)}
        needed = list(dict.fromkeys(i for n in tail for i in n.input if i in produced_here))
        outputs = [o for o in self.outputs if any(o in n.output for n in tail)]
        sub = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model)).extract_model(needed, outputs)
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = self.threads
        self.tail_inputs, self.tail_outputs = needed, outputs
        log.info("sparse engine: %d operator(s) run in ONNX Runtime (%s)", len(tail),
                 ", ".join(sorted({n.op_type for n in tail}))[:200])
        return ort.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"])

    # ------------------------------------------------------------------ running

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for a batch of images (numpy in, numpy out, the ONNX graph's order); torch's own
        operators use the engine's threads meanwhile (the caller's setting is put back)."""
        caller = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._run(images)
        finally:
            torch.set_num_threads(caller)

    def _run(self, images: np.ndarray) -> list[np.ndarray]:
        env: dict[str, torch.Tensor] = dict(self.consts)
        env[self.input] = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        with torch.inference_mode():
            for index, step in enumerate(self.steps):
                if step[0] == "layer":
                    layer = step[1]
                    name, value = layer.output, self._run_layer(layer, *[env[i] for i in layer.inputs])
                else:
                    _, node, a = step
                    inputs = [env[i] if i else None for i in node.input]
                    compiled = self.compiled_ops.get(node.op_type)
                    value = compiled(a, *inputs) if compiled else None
                    value = OPS[node.op_type](a, *inputs) if value is None else value
                    if isinstance(value, tuple):              # Split: one tensor per output
                        for name, part in zip(node.output[1:], value[1:]):
                            env[name] = part
                            self.memory.hold(part)
                        value = value[0]
                    name = node.output[0]
                env[name] = value
                self.memory.hold(value)
                for gone in self.last_use.get(index, ()):           # its last reader has run
                    self.memory.release(env.pop(gone))
        if self.tail is not None:
            feeds = {name: env[name].contiguous().numpy() for name in self.tail_inputs}
            env.update(zip(self.tail_outputs, (torch.from_numpy(o) for o in self.tail.run(self.tail_outputs, feeds))))
        outputs = [env[o].numpy().copy() for o in self.outputs]   # copies: the buffers serve the next run
        for name in self.kept_names:
            self.memory.release(env[name])
        return outputs

    def _liveness(self) -> None:
        """For each step, the tensors read for the last time there (graph outputs and the tail's inputs stay)."""
        kept = set(self.outputs) | set(getattr(self, "tail_inputs", ()))
        last: dict[str, int] = {}
        for index, step in enumerate(self.steps):
            for name in (step[1].inputs if step[0] == "layer" else step[1].input):
                if name:                            # '' is an omitted optional input
                    last[name] = index
            for name in _step_outputs(step):
                last.setdefault(name, index)        # never read: free right away (if read later, that step wins)
        self.last_use: dict[int, list[str]] = {}
        for name, index in last.items():
            if name not in kept and name not in self.consts and name != self.input:
                self.last_use.setdefault(index, []).append(name)
        self.kept_names = [o for o in kept if any(o in _step_outputs(s) for s in self.steps)]

    def _run_layer(self, layer: Layer, x: torch.Tensor,
                   residual: torch.Tensor | None = None) -> torch.Tensor:
        x = planes(x)[0] if x.dim() == 4 else x.contiguous()
        key = tuple(x.shape)
        way = self._forced(layer) or layer.choice.get(key) or self._calibrate(layer, key, x, residual)
        if way != "dense" and self.force:
            layer.weight = None
        return layer.run(way, x, residual, self.threads, self.isa, self.memory)

    def _forced(self, layer: Layer) -> str | None:
        """The way `force` pins `layer` to: 'int8' is 'sparse' for a layer without int8 weights."""
        if self.force == "int8" and "int8" not in layer.ways:
            return "sparse"
        return self.force

    def _max_pool(self, a: dict[str, Any], x: torch.Tensor) -> torch.Tensor | None:
        """MaxPool in the compiled kernel (torch's CPU max-pool took 10% of ResNet-50's time at 90% sparsity)."""
        kernel, strides = a.get("kernel_shape", []), a.get("strides", [1, 1])
        if (x.dim() != 4 or len(kernel) != 2 or strides[0] != strides[1]
                or any(d != 1 for d in a.get("dilations", [1, 1])) or a.get("storage_order", 0)
                or x.dtype != torch.float32 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            return None
        pt, pl, pb, pr = a.get("pads", [0, 0, 0, 0])
        if max(pt, pb) >= kernel[0] or max(pl, pr) >= kernel[1]:
            return None                     # a window of padding alone: torch's rule
        n, c, h, w = x.shape
        ceil = bool(a.get("ceil_mode", 0))
        ho = pool_size(h, kernel[0], strides[0], pt, pb, ceil)
        wo = pool_size(w, kernel[1], strides[0], pl, pr, ceil)
        out = self.memory.take((n, c, ho, wo))
        max_pool(planes(x)[0].numpy(), out.numpy(), kernel=(kernel[0], kernel[1]), stride=strides[0], pads=(pt, pl),
                 threads=self.threads)
        return out

    def _calibrate(self, layer: Layer, key: tuple, x: torch.Tensor,
                   residual: torch.Tensor | None) -> str:
        """Time both ways on this input (median of a few runs) and keep the faster for this input shape."""
        runs = {way: (lambda way=way: self.memory.give_back(layer.run(way, x, residual, self.threads, self.isa,
                                                                       self.memory)))
                for way in layer.ways if way != "int8" or self.int8_vnni}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(CALIBRATION_RUNS):
            for way, run in runs.items():
                start = time.perf_counter()
                run()
                times[way].append((time.perf_counter() - start) * 1e3)
        layer.timings[key] = {way: sorted(t)[len(t) // 2] for way, t in times.items()}
        layer.choice[key] = min(layer.timings[key], key=layer.timings[key].get)
        if "dense" not in layer.choice.values():
            layer.weight = None                  # only the nonzeros stay in memory
        return layer.choice[key]

    def report(self) -> list[dict[str, Any]]:
        """Per layer (convolution or linear) and input shape: sparsity, the way it runs, and both ways' calibrated
        times (ms)."""
        return [{"layer": layer.name, "kind": layer.kind, "input": list(key),
                 "sparsity": round(layer.packed.sparsity, 4), "runs": layer.choice[key],
                 **{f"{way}_ms": round(ms, 4) for way, ms in layer.timings[key].items()}}
                for layer in self.layers() for key in layer.choice]

    def layers(self) -> list[Layer]:
        """The layers with weights, in order: convolutions (with what is fused into them) and linear layers."""
        return [s[1] for s in self.steps if s[0] == "layer"]

    def conv_layers(self) -> list[ConvLayer]:
        return [layer for layer in self.layers() if isinstance(layer, (ConvLayer, QConvLayer))]


def _step_outputs(step) -> list[str]:
    return [step[1].output] if step[0] == "layer" else list(step[1].output)
