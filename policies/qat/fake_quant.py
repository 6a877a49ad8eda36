"""One tensor's observer and fake quantization, and the scheme that says how a model's tensors are quantized."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class QuantScheme:
    """How a model is fake-quantized; the defaults are SparseML's QuantizationModifier's."""

    per_channel_weights: bool = False
    quantize_conv_outputs: bool = True


ACT_RANGE = (0, 255)
WEIGHT_RANGE = (-128, 127)
WEIGHT_LEVELS = 127.0          # symmetric: values land in [-127, 127], safe for u8s8 int8 kernels


class FakeQuantize(nn.Module):
    """Observer + fake quantization of one tensor: affine (activations) or symmetric (weights), per tensor or
    per output channel (dim 0)."""

    def __init__(self, *, per_channel: bool, symmetric: bool | None = None, averaging_constant: float | None = 0.01,
                 quant_range: tuple[int, int] | None = None):
        super().__init__()
        self.per_channel = per_channel
        self.symmetric = per_channel if symmetric is None else symmetric
        self.averaging_constant = averaging_constant   # None: plain min/max of the current tensor
        self.quant_min, self.quant_max = quant_range or (WEIGHT_RANGE if self.symmetric else ACT_RANGE)
        self.observer_enabled = True
        self.fake_quant_enabled = True
        for name, dtype in (("min_val", torch.float32), ("max_val", torch.float32), ("scale", torch.float32),
                            ("zero_point", torch.int32)):
            self.register_buffer(name, torch.zeros(0 if per_channel else 1, dtype=dtype), persistent=False)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool), persistent=False)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        if self.per_channel:
            flat = x.detach().flatten(1)
            lo, hi = flat.amin(1), flat.amax(1)
        else:
            lo, hi = x.detach().amin().reshape(1), x.detach().amax().reshape(1)
        lo, hi = lo.float(), hi.float()
        if self.averaging_constant is None or not bool(self.initialized) or self.min_val.shape != lo.shape:
            self.min_val, self.max_val = lo, hi
        else:
            c = self.averaging_constant
            self.min_val, self.max_val = self.min_val + c * (lo - self.min_val), self.max_val + c * (hi - self.max_val)
        self.initialized.fill_(True)
        self.scale, self.zero_point = self.qparams()

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point from the observed range (which always includes 0)."""
        lo, hi = self.min_val.clamp(max=0), self.max_val.clamp(min=0)
        eps = torch.finfo(torch.float32).eps
        if self.symmetric:
            scale = (torch.maximum(-lo, hi) / WEIGHT_LEVELS).clamp(min=eps)
            return scale, torch.zeros_like(scale, dtype=torch.int32)
        scale = ((hi - lo) / float(self.quant_max - self.quant_min)).clamp(min=eps)
        zero_point = (self.quant_min - torch.round(lo / scale)).clamp(self.quant_min, self.quant_max)
        return scale, zero_point.to(torch.int32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()          # fake quantization stays fp32 under bf16/fp16 autocast (its ops and ranges need it)
        if not bool(self.initialized) or (self.observer_enabled and self.training):
            self.observe(x)
        if not self.fake_quant_enabled:
            return x
        if self.per_channel:
            return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, 0,
                                                          self.quant_min, self.quant_max)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.quant_min, self.quant_max)

    def extra_repr(self) -> str:
        return (f"per_channel={self.per_channel}, symmetric={self.symmetric}, "
                f"range=({self.quant_min}, {self.quant_max})")
