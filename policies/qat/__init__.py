"""Quantization-aware training with our own modules over torch's fake-quantize ops: one tensor's observer and
fake quantizer and the scheme (`fake_quant`), and the QAT twins of Conv2d/Linear with their BatchNorm folded, put
into a model and saved and loaded with it (`modules`). A recipe's QuantizationModifier switches them on
(`policies.modifiers.quantization`)."""
