"""The one ONNX exporter: a module in eval mode to a file, batch axis dynamic, written atomically. The deployment
export (utils.deploy: whole models, fp32 and INT8 QDQ, then checked) and the linear protocol's feature backends
(utils.linear: a frozen backbone) both call `export_module`."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from utils.io import atomic_write

log = logging.getLogger(__name__)

OPSET = 17


def export_module(module: nn.Module, path: str | Path, *, example: torch.Tensor, input_name: str, output_name: str,
                  opset: int = OPSET) -> Path:
    """Write `module` (put in eval mode for the export, its mode restored after) to `path` as ONNX with a dynamic
    batch axis. The TorchScript exporter first (it maps torch.fake_quantize_* to QuantizeLinear/DequantizeLinear
    pairs, which INT8 files need); where a torch has dropped it, the torch.export-based one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
            try:
                torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=[input_name], output_names=[output_name],
                                  dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
            except (TypeError, RuntimeError, ImportError) as err:  # legacy exporter gone: torch.export-based
                log.info("TorchScript ONNX export unavailable (%s); using the torch.export-based exporter", err)
                torch.onnx.export(module, (example,), str(tmp), dynamo=True, verbose=False,
                                  input_names=[input_name], output_names=[output_name],
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))

    try:
        atomic_write(path, write)
    finally:
        module.train(was_training)
    return path
