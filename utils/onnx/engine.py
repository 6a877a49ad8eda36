"""Engine 'sparse': an exported fp32 ONNX file run by utils.onnx.graph (sparse kernels where measured faster)."""
from __future__ import annotations

from typing import Any

import numpy as np

from utils.engines import ENGINES, Engine, _is_quantized
from utils.onnx import kernels
from utils.onnx.graph import SparseGraph


@ENGINES.register("sparse")
class SparseEngine(Engine):
    """Convolutions that skip zero weights, layer by layer where faster (the rest: torch, an ONNX Runtime tail).
    INT8 (QDQ) files run in ONNX Runtime inside this engine: there are no sparse int8 kernels yet."""

    name = "sparse"
    install = "make kernels (builds utils/onnx/kernels with a C compiler: apt-get install gcc)"
    force: str | None = None          # 'sparse' | 'dense': every layer one way (tests)

    @classmethod
    def module(cls) -> Any:
        return kernels.library()

    def _load(self) -> None:
        if _is_quantized(self.path):
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if self.threads:
                options.intra_op_num_threads = self.threads
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self.graph = None
            self.precision = "int8+fp32"       # run by ONNX Runtime inside this engine: no sparse int8 kernels yet
            return
        self.graph = SparseGraph(self.path, threads=self.threads, force=self.force)
        self.precision = "fp32"
        self.instructions = kernels.ISA_NAMES[self.graph.isa]      # what the kernels vectorise with here

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        if self.graph is None:
            return self.session.run(None, {self.session.get_inputs()[0].name:
                                           np.ascontiguousarray(images, dtype=np.float32)})
        return self.graph.run(images)

    def report(self) -> list[dict[str, Any]]:
        """Which layers run sparse, with both ways' calibrated times (see SparseGraph.report)."""
        return [] if self.graph is None else self.graph.report()
