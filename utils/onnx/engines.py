"""CPU inference engines for an exported ONNX file, side by side: one registry, one interface (in utils.onnx,
which the export checks, the feature backends, the summaries and the benches all import; engine 'sparse' registers
from utils/onnx/engine.py).

    onnxruntime  always installed (requirements.txt); fp32, and INT8 QDQ graphs fused into int8 kernels
    openvino     installed (requirements.txt); reads ONNX; on CPUs with AVX-512 BF16 / AMX it runs in bf16 unless
                 pinned (`precision="f32"`); its precision in use is read back from the compiled model
    deepsparse   optional (end-of-life; its last releases need numpy < 2 / onnx 1.14): used when it imports,
                 never required; the only one of the three that skips the zeros of unstructured sparsity

    engine = get_engine("openvino")("model.onnx", threads=2)
    outputs = engine.run(images)             # numpy in, list of numpy outputs (the ONNX graph's order)
    engine.precision                          # what it really computes in: 'fp32', 'bf16', ...

A missing engine is one line saying how to get it (`missing(name)`), never a traceback.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from utils.errors import UserError
from utils.registry import Registry

PRECISIONS = ("default", "f32")      # 'default': the engine's own choice; 'f32': pinned to fp32 where it has a choice


class Engine:
    """One compiled ONNX model on the CPU. Subclasses set `name` and `install` and implement `_load`/`run`."""

    name = "engine"
    install = ""                   # the line that says how to get it
    precision = "fp32"

    def __init__(self, path: str | Path, *, threads: int | None = None, precision: str = "default"):
        if precision not in PRECISIONS:
            raise UserError(f"engine precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        self.path, self.threads, self.requested = Path(path), threads, precision
        self._load()

    @classmethod
    def module(cls) -> Any:
        """The engine's Python package (ImportError when it is not installed)."""
        raise NotImplementedError

    def _load(self) -> None:
        raise NotImplementedError

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


ENGINES: Registry[type[Engine]] = Registry("inference engine")


@ENGINES.register("onnxruntime")
class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"
    install = "pip install onnxruntime"

    @classmethod
    def module(cls) -> Any:
        import onnxruntime
        return onnxruntime

    def _load(self) -> None:
        ort = self.module()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: sessions that take turns (every comparison here) would
        # otherwise burn the cores the next one needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads:
            options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.precision = "int8+fp32" if _is_quantized(self.path) else "fp32"

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input: np.ascontiguousarray(images, dtype=np.float32)})


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def calling_threads_sigaltstack_kept() -> Iterator[None]:
    """OpenVINO's CPU plugin installs a ~10 kB alternate signal stack on the thread that compiles or runs a model.
    Python's signal handlers are installed with SA_ONSTACK, and a signal frame with a large XSAVE area does not
    fit in 10 kB: the next signal with a handler (a DataLoader's SIGCHLD, Ctrl-C) then kills the process with
    SIGSEGV. This puts back the thread's own alternate stack afterwards (Linux; a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        before = _StackT()
        saved = libc.sigaltstack(None, ctypes.byref(before)) == 0
    except (OSError, AttributeError):
        saved = False
    try:
        yield
    finally:
        if saved:
            now = _StackT()
            if libc.sigaltstack(None, ctypes.byref(now)) == 0 and (now.ss_sp, now.ss_flags) != (before.ss_sp,
                                                                                               before.ss_flags):
                libc.sigaltstack(ctypes.byref(before), None)


@ENGINES.register("openvino")
class OpenVinoEngine(Engine):
    name = "openvino"
    install = "pip install openvino"

    @classmethod
    def module(cls) -> Any:
        import openvino
        return openvino

    def _load(self) -> None:
        ov = self.module()
        core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if self.requested == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        with calling_threads_sigaltstack_kept():
            self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
            self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")     # an openvino Type: f32, bf16, f16
        used = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        self.precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(used, used)
        if _is_quantized(self.path):
            self.precision = f"int8+{self.precision}"

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        with calling_threads_sigaltstack_kept():
            result = self.request.infer([np.ascontiguousarray(images, dtype=np.float32)])
        return [np.array(result[output]) for output in self.compiled.outputs]


@ENGINES.register("deepsparse")
class DeepSparseEngine(Engine):
    """DeepSparse compiles for one batch size: one engine per batch size seen."""

    name = "deepsparse"
    install = ("pip install deepsparse (end-of-life: its last release refuses to install; 1.8 needs numpy < 2 and "
               "onnx 1.14, so use a separate environment)")

    @classmethod
    def module(cls) -> Any:
        import deepsparse
        return deepsparse

    def _load(self) -> None:
        self.deepsparse = self.module()
        self.engines: dict[int, Any] = {}
        self.precision = "int8+fp32" if _is_quantized(self.path) else "fp32"

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        batch = len(images)
        if batch not in self.engines:
            self.engines[batch] = self.deepsparse.compile_model(str(self.path), batch_size=batch,
                                                                num_cores=self.threads)
        return self.engines[batch]([np.ascontiguousarray(images, dtype=np.float32)])


def _is_quantized(path: Path) -> bool:
    """Whether an ONNX file holds quantized operators (read once per file version: every engine asks)."""
    stat = Path(path).stat()
    return _has_quantized_ops(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _has_quantized_ops(path: str, mtime_ns: int, size: int) -> bool:
    import onnx

    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv")
               for n in onnx.load(path, load_external_data=False).graph.node)


def missing(name: str) -> str | None:
    """None when engine `name` can run here, else one line saying why not and how to get it."""
    engine = ENGINES.get(name)
    try:
        engine.module()
    except ImportError as err:
        return f"engine {name} is not installed ({err}); {engine.install}"
    except Exception as err:  # noqa: BLE001 -- a broken install (e.g. built against another numpy) is "missing" too
        return f"engine {name} cannot be loaded ({type(err).__name__}: {err}); {engine.install}"
    return None


def available_engines() -> list[str]:
    """The registered engines that run here, by name."""
    return [name for name in ENGINES.names() if missing(name) is None]


def load_engine(name: str, path: str | Path, *, threads: int | None = None, precision: str = "default") -> Engine:
    """Engine `name` over an ONNX file; a missing engine is a UserError with the line from `missing`."""
    why = missing(name)
    if why:
        raise UserError(why)
    return ENGINES.get(name)(path, threads=threads, precision=precision)


def median_latency_ms(runners: dict[str, Callable[[], Any]], *, warmup: int = 3, runs: int = 20) -> dict[str, float]:
    """Median wall time (ms) of each runner; the runners take turns in every round, so drift hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    for i in range(warmup + runs):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            if i >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def engines_latency_ms(files: dict[str, str | Path], images: np.ndarray, engines: list[str], *,
                       threads: int | None = None, precision: str = "default", warmup: int = 3,
                       runs: int = 20, layers: dict | None = None
                       ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]]]:
    """Median latency (ms) of every file in every engine on `images`, all taking turns inside each round, and the
    precision each engine really used: ({engine: {file: ms}}, {engine: {file: precision}}). `layers`, when given,
    receives {engine: {file: {"layers": per-layer report, "whole_graph": {shape: way}}}} of the engines that report
    layers (the sparse engine)."""
    loaded = {(e, k): load_engine(e, p, threads=threads, precision=precision)
              for e in engines for k, p in files.items()}
    timed = median_latency_ms({f"{e}\t{k}": (lambda r=r: r.run(images)) for (e, k), r in loaded.items()},
                              warmup=warmup, runs=runs)
    latency: dict[str, dict[str, float]] = {}
    used: dict[str, dict[str, str]] = {}
    for (e, k), runner in loaded.items():
        latency.setdefault(e, {})[k] = timed[f"{e}\t{k}"]
        used.setdefault(e, {})[k] = runner.precision
        if layers is not None and hasattr(runner, "report"):
            layers.setdefault(e, {})[k] = {"layers": runner.report(),
                                           "whole_graph": {"x".join(map(str, shape)): way for shape, way
                                                           in runner.whole_graph().items()}}
    return latency, used
