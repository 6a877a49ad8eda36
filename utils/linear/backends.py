"""Feature backends: how a frozen backbone turns a batch of images into pooled features.

    torch        the backbone in torch on the run's device
    onnxruntime  the backbone exported once per model content to `<workdir>/<state hash>-<size>px.onnx`
    openvino     (atomically) and run on the CPU by that engine (utils.onnx.engines; the study used the
    deepsparse   end-of-life DeepSparse, which is used when it happens to be installed; the others buy a
    sparse       CPU-optimised path; `sparse` (utils.onnx) multiplies only the nonzero weights, layer by layer
                 where that is measured faster -- the study's linear protocol on sparse backbones)
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

import utils.onnx  # noqa: F401 -- registers engine 'sparse'
from utils.onnx.engines import load_engine
from utils.onnx.export import export_module
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
        return self.model.pooled_features(images)


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
    """Export the eval-mode backbone to ONNX with a dynamic batch axis (atomic write): utils.onnx.export's exporter,
    the one the deployment export uses."""
    was_training = model.training
    try:
        return export_module(Backbone(model.cpu()), path, example=torch.zeros(2, 3, input_size, input_size),
                             input_name=INPUT_NAME, output_name=OUTPUT_NAME)
    finally:
        model.train(was_training)


def onnx_backend(model: nn.Module, *, workdir: Path, input_size: int, engine: str = "onnxruntime") -> BatchFn:
    """Export (or reuse the export of) this exact model, then return its runner in `engine` (utils.onnx.engines)."""
    path = Path(workdir) / f"{state_sha256(model)[:16]}-{input_size}px.onnx"
    if path.exists():
        log.info("reusing ONNX backbone %s", path)
    else:
        log.info("exporting the backbone to ONNX: %s", path)
        export_backbone(model, path, input_size=input_size)
    runner = load_engine(engine, path, threads=torch.get_num_threads())

    def run(images: torch.Tensor) -> np.ndarray:
        return runner.run(images.detach().cpu().numpy())[0]

    return run


@BACKENDS.register("torch")
def torch_backend(model: nn.Module, *, device: torch.device, workdir: Path, input_size: int) -> BatchFn:
    """The backbone in torch on `device`, eval mode, inference mode."""
    del workdir, input_size
    model = model.eval().to(device)

    def run(images: torch.Tensor) -> np.ndarray:
        model.eval()  # cheap, and robust to anyone switching the shared model to training mode
        with torch.inference_mode():
            return model.pooled_features(images.to(device, non_blocking=True)).float().cpu().numpy()

    return run


def engine_backend(engine: str) -> Callable[..., BatchFn]:
    def build(model: nn.Module, *, device: torch.device, workdir: Path, input_size: int) -> BatchFn:
        if device.type != "cpu":
            log.info("the %s backend runs on the CPU (ignoring %s)", engine, device)
        return onnx_backend(model, workdir=workdir, input_size=input_size, engine=engine)

    build.__doc__ = f"The backbone exported to ONNX and run by {engine} on the CPU (whatever `device` says)."
    return build


for _engine in ("onnxruntime", "openvino", "deepsparse", "sparse"):
    BACKENDS.register(_engine)(engine_backend(_engine))


def build_backend(name: str, model: nn.Module, *, device: torch.device, workdir: Path, input_size: int) -> BatchFn:
    return BACKENDS.get(name)(model, device=device, workdir=workdir, input_size=input_size)
