"""Feature backends: how a frozen backbone turns a batch of images into pooled features.

    torch        the backbone in torch on the run's device
    onnxruntime  the backbone exported once per model content to `<workdir>/<state hash>-<size>px.onnx`
                 (atomically) and run with onnxruntime's CPU provider (in place of the study's end-of-life
                 DeepSparse engine; onnxruntime does not exploit unstructured sparsity, it buys a torch-free,
                 CPU-optimised path)
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from utils.errors import UserError
from utils.io import atomic_write
from utils.registry import Registry

log = logging.getLogger(__name__)

BatchFn = Callable[[torch.Tensor], np.ndarray]
BACKENDS: Registry[Callable[..., BatchFn]] = Registry("feature backend")
INPUT_NAME, OUTPUT_NAME = "images", "features"


class Backbone(nn.Module):
    """`forward` = the wrapped model's pooled features, so exporters see only the backbone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


def state_sha256(model: nn.Module) -> str:
    """Hex SHA-256 over the backbone's state dict (names, shapes, dtypes, values; classifier excluded)."""
    digest = hashlib.sha256()
    head = getattr(model, "classifier_name", None)
    for name, tensor in model.state_dict().items():
        if head and name.startswith(head + "."):
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_backbone(model: nn.Module, path: str | Path, *, input_size: int) -> Path:
    """Export the eval-mode backbone to ONNX with a dynamic batch axis (atomic write)."""
    was_training = model.training
    backbone = Backbone(model.cpu()).eval()  # the exporter restores its module's mode: make that eval
    example = torch.zeros(2, 3, input_size, input_size)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
            try:
                torch.onnx.export(backbone, (example,), str(tmp), dynamo=False, input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], opset_version=17,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
            except (TypeError, RuntimeError, ImportError) as err:  # legacy exporter gone: torch.export-based
                log.info("TorchScript ONNX export unavailable (%s); using the torch.export-based exporter", err)
                torch.onnx.export(backbone, (example,), str(tmp), dynamo=True, verbose=False,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))

    try:
        atomic_write(path, write)
    finally:
        model.train(was_training)
    return Path(path)


class OnnxBackbone:
    """An onnxruntime CPU session over an exported backbone: images (N,3,H,W) -> features (N,D)."""

    def __init__(self, path: str | Path, *, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("the onnxruntime backend needs the onnxruntime package: pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        batch = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]


def onnx_backend(model: nn.Module, *, workdir: Path, input_size: int) -> Callable[[torch.Tensor], np.ndarray]:
    """Export (or reuse the export of) this exact model, then return the onnxruntime runner."""
    path = Path(workdir) / f"{state_sha256(model)[:16]}-{input_size}px.onnx"
    if path.exists():
        log.info("reusing ONNX backbone %s", path)
    else:
        log.info("exporting the backbone to ONNX: %s", path)
        export_backbone(model, path, input_size=input_size)
    return OnnxBackbone(path)


@BACKENDS.register("torch")
def torch_backend(model: nn.Module, *, device: torch.device, workdir: Path, input_size: int) -> BatchFn:
    """The backbone in torch on `device`, eval mode, inference mode."""
    del workdir, input_size
    model = model.eval().to(device)

    def run(images: torch.Tensor) -> np.ndarray:
        model.eval()  # cheap, and robust to anyone switching the shared model to training mode
        with torch.inference_mode():
            return model.forward_features(images.to(device, non_blocking=True)).float().cpu().numpy()

    return run


@BACKENDS.register("onnxruntime")
def onnxruntime_backend(model: nn.Module, *, device: torch.device, workdir: Path, input_size: int) -> BatchFn:
    """The backbone exported to ONNX and run by onnxruntime on the CPU (whatever `device` says)."""
    if device.type != "cpu":
        log.info("the onnxruntime backend runs on the CPU (ignoring %s)", device)
    return onnx_backend(model, workdir=workdir, input_size=input_size)


def build_backend(name: str, model: nn.Module, *, device: torch.device, workdir: Path, input_size: int) -> BatchFn:
    return BACKENDS.get(name)(model, device=device, workdir=workdir, input_size=input_size)
