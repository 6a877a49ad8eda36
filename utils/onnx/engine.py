"""Engine 'sparse': an exported ONNX file (fp32, or INT8 QDQ) run by utils.onnx.graph (sparse kernels where faster)."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from utils.onnx import kernels
from utils.onnx.engines import ENGINES, Engine, _is_quantized
from utils.onnx.graph import SparseGraph
from utils.onnx.kernels import quantized

WHOLE_GRAPH_RUNS = 5
# ONNX Runtime keeps the graph unless a sparse way is this much faster: the check drifts with the machine (MobileNet
# at 90%, batch 1: its kernels measured 9.4 vs 11.6 ms here, then 10.3 vs 9.9 taking turns in the same process).
MARGIN = 0.03


@ENGINES.register("sparse")
class SparseEngine(Engine):
    """Convolutions that skip zero weights, layer by layer where faster (the rest: torch, an ONNX Runtime tail);
    in INT8 (QDQ) files also int8 kernels on blocks of 4 input channels (utils.onnx.qlayers)."""

    name = "sparse"
    install = "make kernels (builds utils/onnx/kernels with a C compiler: apt-get install gcc)"
    force: str | None = None          # 'int8' | 'sparse' | 'dense': every layer one way (tests; 'int8': 'sparse'
                                      # for layers without int8 weights)

    @classmethod
    def module(cls) -> Any:
        return kernels.library()

    def _load(self) -> None:
        self.session: Any = None
        self.whole: dict[tuple, dict[str, Any]] = {}       # input shape -> which way the whole graph runs, times
        self.graph = SparseGraph(self.path, threads=self.threads, force=self.force)
        self.instructions = kernels.ISA_NAMES[self.graph.isa]      # what the kernels vectorise with here
        if _is_quantized(self.path):     # QDQ: int8 kernels where faster, activations fp32 between the layers
            self.precision = "int8+fp32"
            self.instructions += f", int8: {quantized.ISA_NAMES[quantized.qisa(self.graph.isa)]}"
        else:
            self.precision = "fp32"

    def _onnxruntime(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads:
            options.intra_op_num_threads = self.threads
        return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def _run_onnxruntime(self, images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.session.get_inputs()[0].name:
                                       np.ascontiguousarray(images, dtype=np.float32)})

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        key = tuple(images.shape)
        way = "sparse" if self.force else (self.whole[key]["runs"] if key in self.whole else self._choose(images))
        return self._ways()[way](images)

    def _ways(self) -> dict[str, Any]:
        return {"sparse": self.graph.run, "sparse_chunks": self._run_chunks, "onnxruntime": self._run_onnxruntime}

    def _run_chunks(self, images: np.ndarray) -> list[np.ndarray]:
        """The batch in chunks of one image per thread: each layer's output for a chunk stays in the caches for the
        next layer (at batch 16 on ResNet-50, 90%: 18.2 vs 21.1 ms per image, measured side by side)."""
        size = self.graph.threads
        parts = [self.graph.run(images[i:i + size]) for i in range(0, len(images), size)]
        return [np.concatenate(outputs) for outputs in zip(*parts)]

    def _choose(self, images: np.ndarray) -> str:
        """The whole graph's way for this input shape: the sparse/dense mix (calibrated on its first run), the same
        in chunks of one image per thread (a batch larger than the threads), or all of it in ONNX Runtime, whichever
        is measured faster -- so the engine is never slower than ONNX Runtime fp32."""
        ways = self._ways()
        whole_batch = self.graph.run(images)                          # per-layer calibration, then warm
        if len(images) <= self.graph.threads or \
                [o.shape for o in self._run_chunks(images)] != [o.shape for o in whole_batch]:
            ways.pop("sparse_chunks")                    # nothing to split, or an output not stacked by image
        self.session = self.session or self._onnxruntime()
        self._run_onnxruntime(images)
        times: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(WHOLE_GRAPH_RUNS):
            for way, run in ways.items():
                start = time.perf_counter()
                run(images)
                times[way].append((time.perf_counter() - start) * 1e3)
        medians = {way: sorted(t)[len(t) // 2] for way, t in times.items()}
        handicap = {"onnxruntime": 1.0 - MARGIN}
        way = min(medians, key=lambda w: medians[w] * handicap.get(w, 1.0))
        self.whole[tuple(images.shape)] = {"runs": way, **{f"{k}_ms": round(v, 3) for k, v in medians.items()}}
        if all(w["runs"] != "onnxruntime" for w in self.whole.values()):
            self.session = None                         # keep only the compressed weights
        return way

    def report(self) -> list[dict[str, Any]]:
        """Which layers run sparse, with both ways' calibrated times (see SparseGraph.report)."""
        return self.graph.report()

    def whole_graph(self) -> dict[tuple, dict[str, Any]]:
        """Per input shape: whether the graph runs as the sparse/dense mix or in ONNX Runtime, and both times."""
        return dict(self.whole)
