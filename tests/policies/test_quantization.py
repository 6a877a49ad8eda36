"""QAT modules and the QuantizationModifier: shared parameters, observers/BN schedule, resume, no torch.ao."""
import math
from pathlib import Path

import pytest
import torch

import policies.qat.modules as q
from models import build_model
from policies.loggers import CheckpointSaver
from policies.qat.modules import (
    FakeQuantize,
    FoldedBatchNorm2d,
    QATConv2d,
    QATLinear,
    freeze_bn_stats_,
    load_qat_state_,
    prepare_qat_,
    qat_state,
    quantizable_modules,
    set_observers_,
)

QAT = """
training_modifiers:
  - !EpochRangeModifier
    end_epoch: 3
  - !SetLearningRateModifier
    start_epoch: 0
    learning_rate: 0.02
pruning_modifiers:
  - !ConstantPruningModifier
    params: __ALL_PRUNABLE__
quantization_modifiers:
  - !QuantizationModifier
    start_epoch: 1
    disable_quantization_observer_epoch: 2
    freeze_bn_stats_epoch: 2
"""


def test_prepare_shares_parameters_and_keeps_state_dict_keys():
    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=5)
    keys = list(model.state_dict())
    params = dict(model.named_parameters())
    names = prepare_qat_(model, quantizable_modules(model))
    assert "conv1" in names and "layer2.0.downsample.0" in names and "fc" in names
    assert list(model.state_dict()) == keys, "checkpoints keep plain-model keys"
    assert all(p is params[n] for n, p in model.named_parameters()), "optimizer and masks keep their tensors"
    assert isinstance(model.conv1, QATConv2d) and isinstance(model.bn1, FoldedBatchNorm2d)
    assert model.conv1.bn is model.bn1 and isinstance(model.fc, QATLinear)
    assert quantizable_modules(model) == [], "prepared modules are not prepared twice"


def fake_quantized_output(scheme):
    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=5)
    x = torch.randn(32, 3, 16, 16)
    model.train()
    with torch.no_grad():
        model(x)                      # BN statistics of this data
    model.eval()
    ref = model(x).detach()
    prepare_qat_(model, quantizable_modules(model), scheme)
    model.train()
    freeze_bn_stats_(model)
    with torch.no_grad():
        model(x)                      # calibrate observers
    model.eval()
    return model, ref, model(x).detach()


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_fake_quantized_model_stays_close_to_the_float_model(per_channel):
    model, ref, out = fake_quantized_output(q.QuantScheme(per_channel_weights=per_channel))
    assert not torch.equal(out, ref), "fake quantization changes the numbers"
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos > 0.99
    act = model.layer1[0].conv1.input_quant
    assert act.zero_point.item() == 0 and act.quant_min == 0, "post-ReLU activations use the full uint8 range"
    w = model.layer1[0].conv1.weight_quant
    assert w.scale.shape == ((16,) if per_channel else (1,)) and (w.zero_point == 0).all() and w.symmetric


def test_row9_sparseml_default_is_per_tensor_weights_and_per_channel_is_the_more_accurate_option():
    errors = {}
    for per_channel in (False, True):
        model, ref, out = fake_quantized_output(q.QuantScheme(per_channel_weights=per_channel))
        errors[per_channel] = float((out - ref).abs().mean())
    assert errors[True] < errors[False], errors
    assert q.QuantScheme() == q.QuantScheme(per_channel_weights=False, quantize_conv_outputs=True)


QAT_FLAGS = """
training_modifiers:
  - !EpochRangeModifier
    end_epoch: 2
quantization_modifiers:
  - !QuantizationModifier
    start_epoch: 1
    disable_quantization_observer_epoch: 1
    quantize_conv_activations: {conv}
    per_channel_weights: {per_channel}
"""


@pytest.mark.parametrize("conv, per_channel", [(False, False), (True, True)])
def test_rows_9_10_11_qat_options_and_observers_frozen_at_the_start(conv, per_channel, make_manager):
    text = QAT_FLAGS.format(conv=str(conv).lower(), per_channel=str(per_channel).lower())
    manager, _, _ = make_manager(text)
    metrics = manager.fit()        # observers frozen from the QAT start: each quantizer still calibrates once
    assert math.isfinite(metrics["train_loss"])
    convs = [m for m in manager.state.model.modules() if isinstance(m, QATConv2d)]
    assert convs and all((m.output_quant is not None) == conv for m in convs), "quantize_conv_activations"
    assert all(m.weight_quant.per_channel == per_channel for m in convs)
    assert all(bool(fq.initialized) and bool(torch.isfinite(fq.scale).all()) and not fq.observer_enabled
               for m in convs for fq in m.fake_quantizers().values())
    saved = qat_state(manager.state.model)
    assert saved["scheme"] == {"per_channel_weights": per_channel, "quantize_conv_outputs": conv}


def test_observer_and_bn_freezing_follow_the_recipe_epochs(make_manager):
    manager, policies, _ = make_manager(QAT)
    model = manager.state.model
    snapshots = {}

    class Snap(CheckpointSaver):
        def __init__(self):
            super().__init__(Path("unused"), lambda: None)

        def on_epoch_end(self, state):
            conv = state.model.conv2
            snapshots[state.epoch] = {
                "qat": isinstance(conv, QATConv2d),
                "scale": conv.output_quant.scale.clone() if isinstance(conv, QATConv2d) else None,
                "running_mean": state.model.bn2.running_mean.clone()}

    manager.policies.append(Snap())
    zeros = {n: p.detach() == 0 for n, p in model.named_parameters() if p.dim() > 1}
    manager.fit()
    assert not snapshots[0]["qat"] and snapshots[1]["qat"] and snapshots[2]["qat"]
    assert torch.equal(snapshots[1]["scale"], snapshots[2]["scale"]), "observers frozen from epoch 2"
    assert torch.equal(snapshots[1]["running_mean"], snapshots[2]["running_mean"]), "BN statistics frozen"
    assert not torch.equal(snapshots[0]["running_mean"], snapshots[1]["running_mean"]), "epoch 1 updates them"
    for name, zero in zeros.items():
        assert torch.equal(model.get_parameter(name) == 0, zero), f"{name}: masks hold through QAT"


def test_resume_in_the_middle_of_qat_equals_an_uninterrupted_run(tmp_path, make_manager):
    full, _, _ = make_manager(QAT)
    full.fit()
    first, _, _ = make_manager(QAT)
    first.policies.append(CheckpointSaver(tmp_path / "ck.pt", first.training_state))
    first.state.num_epochs = 2        # killed after the first QAT epoch, observers still running
    first.fit()
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert ck["policies"]["recipe.quantization_modifiers.0.QuantizationModifier"]["qat"]["modules"]
    second, _, _ = make_manager(QAT)
    second.restore(ck)
    second.fit()
    for (name, a), b in zip(full.state.model.state_dict().items(), second.state.model.state_dict().values()):
        assert torch.equal(a, b), name
    sa, sb = qat_state(full.state.model)["modules"], qat_state(second.state.model)["modules"]
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name]["quantizers"].keys() == sb[name]["quantizers"].keys()
        for kind in sa[name]["quantizers"]:
            assert torch.equal(sa[name]["quantizers"][kind]["scale"], sb[name]["quantizers"][kind]["scale"])


def test_qat_state_round_trips_into_a_fresh_model():
    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=5)
    prepare_qat_(model, quantizable_modules(model, submodules=["conv1", "layer1"]))
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 16, 16))
    set_observers_(model, False)
    freeze_bn_stats_(model)
    model.eval()
    fresh = build_model("resnet_small", num_classes=5)
    fresh.load_state_dict(model.state_dict())
    load_qat_state_(fresh, qat_state(model))
    fresh.eval()
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(fresh(x), model(x))
    assert isinstance(fresh.layer2[0].conv1, torch.nn.Conv2d) and not isinstance(fresh.layer2[0].conv1, QATConv2d)


def test_fake_quantize_modes():
    fq = FakeQuantize(per_channel=False)
    x = torch.linspace(-1, 3, 101)
    y = fq(x)
    assert fq.scale.item() == pytest.approx(4 / 255) and len(torch.unique(y)) <= 256
    assert (y - x).abs().max() <= fq.scale.item() / 2 + 1e-6
    fq.observer_enabled = False
    fq(x * 10)
    assert fq.scale.item() == pytest.approx(4 / 255), "a disabled observer keeps its range"


def test_quantization_does_not_use_torch_ao():
    import ast

    import policies.modifiers.quantization as modifier
    import utils.deploy.export as export
    import utils.deploy.onnx as onnx_export

    for module in (q, modifier, export, onnx_export):
        tree = ast.parse(Path(module.__file__).read_text())
        used = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        used |= {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        bad = sorted(u for u in used if u and u.startswith(("torch.ao", "torch.quantization", "torch.nn.quantized",
                                                             "torch.nn.intrinsic")))
        assert not bad, f"{module.__name__} uses {bad}"


def test_conv_bn_relu_fuse_inside_sequential_and_export_agrees(tmp_path):
    from utils.deploy import compare_with_torch, export_onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 5))
    prepare_qat_(model, quantizable_modules(model))
    assert isinstance(model[2], q.FusedReLU) and model[0].relu and model[3].relu
    x = torch.randn(64, 3, 12, 12)
    model.train()
    with torch.no_grad():
        model(x)
    set_observers_(model, False)
    model.eval()
    hidden = model[3](model[0](x))
    assert (hidden >= 0).all(), "the fused ReLU runs before the output quantizer"
    result = compare_with_torch(model, export_onnx(model, tmp_path / "m.onnx", input_size=12), x)
    assert result["top1_agreement"] >= 0.95 and result["max_abs_diff"] < 0.05


def test_submodules_and_ignore_accept_sparseml_names():
    from policies.modifiers import build_modifiers
    from policies.recipe.load import load_recipe_text

    def names(extra):
        recipe = load_recipe_text("quantization_modifiers:\n  - !QuantizationModifier\n    start_epoch: 0\n" + extra)
        (mod,) = build_modifiers(recipe, model=build_model("resnet_small", num_classes=3), steps_per_epoch=2)
        return mod.module_names

    every = names("")
    assert "fc" in every and "conv1" in every
    stages = names("    submodules: [input, sections]\n")
    assert "conv1" in stages and "layer3.0.downsample.0" in stages and "fc" not in stages
    assert names("    ignore: [classifier.fc]\n") == [n for n in every if n != "fc"]
    assert names("    ignore: [Linear, sections.0]\n") == [n for n in every if n != "fc" and not n.startswith("layer1")]
