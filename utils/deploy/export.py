"""One checkpoint -> everything a deployment needs: ONNX (fp32, and INT8 QDQ for quantization-aware-trained
models), each checked against the torch model in ONNX Runtime, and the compressed (bitmask + nonzeros) size."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from policies.quantization import load_qat_state_, qat_modules
from utils.checkpoints import load_checkpoint
from utils.deploy.compress import compressed_size_report
from utils.deploy.onnx import compare_with_torch, export_onnx


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, flavour: str | None = None,
                      image_size: int | None = None, num_samples: int = 64, seed: int = 0,
                      inputs: torch.Tensor | None = None) -> dict[str, Any]:
    """fp32 ONNX (+ INT8 QDQ ONNX when the checkpoint was quantization-aware trained), checks, sizes.

    `inputs` (N, 3, H, W) are the sample inputs compared on (default: `num_samples` seeded N(0, 1) images,
    which matches normalised data)."""
    out_dir = Path(out_dir)
    loaded = load_checkpoint(checkpoint, flavour=flavour, keep_classifier=True)
    model, quant = loaded.model.eval(), loaded.extra.get("quantization")
    size = image_size or (inputs.shape[-1] if inputs is not None else loaded.input_size)   # the trained size
    if inputs is None:     # detectors take [0, 1] pixels; classifiers normalised ones
        draw = torch.rand if getattr(model, "task", None) == "detection" else torch.randn
        inputs = draw(num_samples, 3, size, size, generator=torch.Generator().manual_seed(seed))
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "input_size": size}
    fp32 = export_onnx(model, out_dir / "model_fp32.onnx", input_size=size)
    report["fp32"] = {"path": str(fp32), "bytes": fp32.stat().st_size, **compare_with_torch(model, fp32, inputs)}
    if quant and quant.get("modules"):
        load_qat_state_(model, quant)
        int8 = export_onnx(model, out_dir / "model_int8.onnx", input_size=size)
        report["int8"] = {"path": str(int8), "bytes": int8.stat().st_size, "quantized_modules": len(qat_modules(model)),
                          **compare_with_torch(model, int8, inputs)}
    report["size"] = compressed_size_report(model.state_dict(), out_dir / "model_compressed.pt")
    return report
