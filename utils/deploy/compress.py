"""Sparse checkpoints stored compressed: each sparse float tensor as a packed bitmask plus its nonzero values."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from utils.errors import UserError
from utils.io import atomic_torch_save

COMPRESSED_FORMAT = "bitmask-nonzeros-v1"
SPARSE_ENOUGH = 0.125   # below this fraction of zeros a bitmask costs more than it saves (fp32)


def compress_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Sparse float tensors as (packed bitmask, nonzero values); everything else as is."""
    tensors: dict[str, Any] = {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        zeros = float((t == 0).float().mean()) if t.is_floating_point() and t.numel() else 0.0
        if t.dim() >= 2 and zeros >= SPARSE_ENOUGH:
            mask = (t != 0).flatten()
            bits = torch.from_numpy(np.packbits(mask.numpy()))
            tensors[name] = {"shape": list(t.shape), "bitmask": bits, "values": t.flatten()[mask].clone()}
        else:
            tensors[name] = t.clone()
    return {"format": COMPRESSED_FORMAT, "tensors": tensors}


def decompress_state_dict(payload: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Inverse of `compress_state_dict` (bit for bit)."""
    if payload.get("format") != COMPRESSED_FORMAT:
        raise UserError(f"not a {COMPRESSED_FORMAT} file (format {payload.get('format')!r})")
    out = {}
    for name, item in payload["tensors"].items():
        if isinstance(item, dict):
            numel = int(np.prod(item["shape"]))
            mask = torch.from_numpy(np.unpackbits(item["bitmask"].numpy(), count=numel).astype(bool))
            dense = torch.zeros(numel, dtype=item["values"].dtype)
            dense[mask] = item["values"]
            out[name] = dense.reshape(item["shape"])
        else:
            out[name] = item
    return out


def _saved_bytes(obj: Any) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def compressed_size_report(state_dict: Mapping[str, torch.Tensor],
                           out_path: str | Path | None = None) -> dict[str, Any]:
    """Bytes of the state dict saved dense vs with bitmask + nonzeros (written to `out_path` when given)."""
    dense = {k: v.detach().cpu() for k, v in state_dict.items()}
    payload = compress_state_dict(dense)
    if out_path is not None:
        atomic_torch_save(out_path, payload)
        compressed = Path(out_path).stat().st_size
    else:
        compressed = _saved_bytes(payload)
    dense_bytes = _saved_bytes(dense)
    return {"dense_bytes": dense_bytes, "compressed_bytes": compressed, "ratio": dense_bytes / compressed,
            "sparse_tensors": sum(isinstance(v, dict) for v in payload["tensors"].values())}
