"""Quantization-aware training with our own modules over torch's fake-quantize ops (no torch.ao.quantization).

`prepare_qat_(model, module_names)` swaps each chosen Conv2d/Linear for a QAT twin that shares its Parameters
(optimizer, masks and `state_dict` keys are unchanged), folds the BatchNorm right after a conv into it and,
inside an nn.Sequential, the ReLU after that too:
  weights      int8, symmetric (scale = max|w| / 127, zero point 0), per tensor as SparseML's default scheme,
               or per output channel (`QuantScheme(per_channel_weights=True)`: 2-10x lower weight error)
  activations  uint8, asymmetric, per tensor, moving-average min/max; quantized at each layer's input and at
               each conv's output unless `quantize_conv_outputs=False` (a Linear's output, the logits, stays
               float, as with SparseML's `quantize_linear_activations: false`)
A quantizer that has never observed anything observes its first input even when observers are frozen
(SparseML's torch quantizers would use their default scale 1.0 there).
Observers and quantization parameters are non-persistent buffers; `qat_state(model)` / `load_qat_state_(...)`
carry them (the QuantizationModifier stores them in its policy state), so checkpoints keep plain-model keys.
Exported to ONNX, every fake-quantize op becomes a QuantizeLinear/DequantizeLinear pair (opset >= 13).
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from policies.qat.fake_quant import FakeQuantize, QuantScheme

log = logging.getLogger(__name__)



class FoldedBatchNorm2d(nn.Module):
    """A BatchNorm2d whose affine and statistics the preceding QAT conv applies: the same tensors under the
    same names (checkpoints unchanged), and identity in forward."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.num_features, self.eps, self.momentum = bn.num_features, bn.eps, bn.momentum
        self.weight, self.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(bn, name))
        self.original = [bn]      # a list, so it is not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _QATMixin:
    """Input/output activation and weight fake-quantizers shared by the QAT conv and linear."""

    def _init_quant(self, scheme: QuantScheme, *, quantize_output: bool) -> None:
        self.scheme = scheme
        per_channel_weights = scheme.per_channel_weights
        self.input_quant = FakeQuantize(per_channel=False)
        self.weight_quant = FakeQuantize(per_channel=per_channel_weights, symmetric=True, averaging_constant=None)
        self.output_quant = FakeQuantize(per_channel=False) if quantize_output else None

    def fake_quantizers(self) -> dict[str, FakeQuantize]:
        found = {"input": self.input_quant, "weight": self.weight_quant, "output": self.output_quant}
        return {k: v for k, v in found.items() if v is not None}


class QATConv2d(_QATMixin, nn.Conv2d):
    """Conv2d (+ folded BatchNorm) with fake-quantized input, weight and output; shares the original Parameters."""

    def __init__(self, conv: nn.Conv2d, bn: FoldedBatchNorm2d | None = None, *, relu: bool = False,
                 scheme: QuantScheme = QuantScheme()):
        nn.Conv2d.__init__(self, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                           device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self._init_quant(scheme, quantize_output=scheme.quantize_conv_outputs)
        self.to(conv.weight.device)
        self.__dict__["bn"] = bn          # not a registered child: its tensors stay under the BN's own name
        self.freeze_bn_stats = False
        self.relu = relu
        self.original = [conv]

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        bn = self.bn
        if bn is None:
            return self._output(self._conv(x, self.weight_quant(self.weight), self.bias))
        std = torch.sqrt(bn.running_var + bn.eps)
        factor = bn.weight / std
        if self.training and not self.freeze_bn_stats:
            # Jacob et al.: quantize the weight folded with running statistics, undo the fold, then let the
            # real BatchNorm normalise with batch statistics (and update its running statistics).
            safe = torch.where(factor == 0, torch.ones_like(factor), factor)  # a zero gamma cannot be undone
            folded = self.weight_quant(self.weight * safe.reshape(-1, 1, 1, 1))
            y = self._conv(x, folded, None) / safe.reshape(1, -1, 1, 1)
            if self.bias is not None:
                y = y + self.bias.reshape(1, -1, 1, 1)
            bn.num_batches_tracked.add_(1)
            y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, bn.momentum, bn.eps)
        else:
            folded = self.weight_quant(self.weight * factor.reshape(-1, 1, 1, 1))
            bias = self.bias if self.bias is not None else torch.zeros_like(bn.running_mean)
            y = self._conv(x, folded, bn.bias + (bias - bn.running_mean) * factor)
        return self._output(y)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", bn folded" if self.bn is not None else "") + (", relu" if self.relu else "")

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        y = F.relu(y) if self.relu else y
        return self.output_quant(y) if self.output_quant is not None else y


class QATLinear(_QATMixin, nn.Linear):
    """Linear with fake-quantized input and weight; shares the original Parameters. Its output (here: the
    logits) stays float, as 8-bit logits would tie; ONNX Runtime runs it as a float Gemm, cheap for a head."""

    def __init__(self, linear: nn.Linear, *, scheme: QuantScheme = QuantScheme()):
        nn.Linear.__init__(self, linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias
        self._init_quant(scheme, quantize_output=False)
        self.to(linear.weight.device)
        self.original = [linear]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quant(x), self.weight_quant(self.weight), self.bias)


def _fusion_groups(model: nn.Module) -> dict[str, tuple[str | None, str | None]]:
    """conv name -> (the BatchNorm2d registered right after it, the ReLU after that when the parent is an
    nn.Sequential). Registration order is call order in every model here (torchvision ResNets, our small ResNet,
    MobileNetV1); a ReLU is fused only inside a Sequential, where each child runs exactly once (torchvision's
    blocks call one ReLU module several times)."""
    groups = {}
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        prefix = f"{parent_name}." if parent_name else ""
        for i, (name, child) in enumerate(children):
            if not isinstance(child, nn.Conv2d):
                continue
            rest = children[i + 1:i + 3]
            bn = None
            if rest and isinstance(rest[0][1], nn.BatchNorm2d) and rest[0][1].num_features == child.out_channels:
                bn = prefix + rest[0][0]
                rest = rest[1:]
            relu = None
            if isinstance(parent, nn.Sequential) and rest and type(rest[0][1]) is nn.ReLU:
                relu = prefix + rest[0][0]
            groups[prefix + name] = (bn, relu)
    return groups


class FusedReLU(nn.Identity):
    """Stands where a ReLU was: the preceding QAT conv applies it before quantizing its output."""


def quantizable_modules(model: nn.Module, *, submodules: Iterable[str] = ("",),
                        ignore: Iterable[str] = ()) -> list[str]:
    """Names of Conv2d/Linear modules under any of `submodules` ("" = all) and not under/of type `ignore`."""
    prefixes = tuple(submodules)
    ignored = tuple(ignore)

    def under(name: str, roots: tuple[str, ...]) -> bool:
        return any(r == "" or name == r or name.startswith(r + ".") for r in roots)

    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, (QATConv2d, QATLinear))
            and under(n, prefixes) and not under(n, tuple(i for i in ignored if i))
            and type(m).__name__ not in ignored]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def prepare_qat_(model: nn.Module, module_names: Iterable[str], scheme: QuantScheme = QuantScheme()) -> list[str]:
    """Swap the named Conv2d/Linear modules for QAT twins (conv-bn(-relu) fused); returns their names."""
    groups = _fusion_groups(model)
    done = []
    for name in module_names:
        module = model.get_submodule(name)
        if isinstance(module, nn.Conv2d):
            bn_name, relu_name = groups.get(name, (None, None))
            bn = None
            if bn_name:
                bn = FoldedBatchNorm2d(model.get_submodule(bn_name))
                _set(model, bn_name, bn)
            if relu_name:
                _set(model, relu_name, FusedReLU())
            qat: nn.Module = QATConv2d(module, bn, relu=relu_name is not None, scheme=scheme)
        elif isinstance(module, nn.Linear):
            qat = QATLinear(module, scheme=scheme)
        else:
            raise TypeError(f"{name} is a {type(module).__name__}, not Conv2d/Linear")
        qat.train(module.training)
        _set(model, name, qat)
        done.append(name)
    return done


def qat_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (QATConv2d, QATLinear))}


def set_observers_(model: nn.Module, enabled: bool) -> None:
    for m in model.modules():
        if isinstance(m, FakeQuantize):
            m.observer_enabled = enabled


def freeze_bn_stats_(model: nn.Module, frozen: bool = True) -> None:
    for m in qat_modules(model).values():
        if isinstance(m, QATConv2d):
            m.freeze_bn_stats = frozen


def calibrated_qat_(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Fake quantization in every quantizable module of `model`, its observers calibrated on `batches` with the
    BatchNorm statistics frozen, then the observers frozen too; returns the model in eval mode (post-training
    quantization without training: the deployment benchmarks' INT8 twins)."""
    prepare_qat_(model, quantizable_modules(model))
    model.train()
    freeze_bn_stats_(model)
    with torch.no_grad():
        for batch in batches:
            model(batch)
    set_observers_(model, False)
    return model.eval()


def qat_state(model: nn.Module) -> dict[str, Any]:
    """Everything the QAT modules hold outside `state_dict`: the scheme, module names, flags, quantization
    parameters."""
    modules, scheme = {}, None
    for name, m in qat_modules(model).items():
        scheme = scheme or m.scheme
        modules[name] = {
            "bn_frozen": getattr(m, "freeze_bn_stats", False),
            "quantizers": {k: {"min_val": q.min_val.cpu(), "max_val": q.max_val.cpu(), "scale": q.scale.cpu(),
                               "zero_point": q.zero_point.cpu(), "initialized": bool(q.initialized),
                               "observer_enabled": q.observer_enabled}
                           for k, q in m.fake_quantizers().items()},
        }
    return {"modules": modules, "scheme": asdict(scheme or QuantScheme())}


def load_qat_state_(model: nn.Module, state: dict[str, Any]) -> None:
    """Re-create QAT modules (if needed) and restore their quantization parameters and flags."""
    names = list(state.get("modules", {}))
    missing = [n for n in names if n not in qat_modules(model)]
    # Files written before schemes were recorded used per-channel weights and quantized conv outputs.
    scheme = QuantScheme(**state.get("scheme", {"per_channel_weights": True, "quantize_conv_outputs": True}))
    prepare_qat_(model, missing, scheme)
    mods = qat_modules(model)
    for name, saved in state["modules"].items():
        m = mods[name]
        if isinstance(m, QATConv2d):
            m.freeze_bn_stats = saved["bn_frozen"]
        for key, q in m.fake_quantizers().items():
            s = saved["quantizers"][key]
            device = m.weight.device
            q.min_val, q.max_val = s["min_val"].to(device), s["max_val"].to(device)
            q.scale, q.zero_point = s["scale"].to(device), s["zero_point"].to(device)
            q.initialized.fill_(s["initialized"])
            q.observer_enabled = s["observer_enabled"]
