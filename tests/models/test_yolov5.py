"""YOLOv5 n/s/m/l/x: the reference's module tree, sizes and numerics (fixture made with the reference code)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models import architectures, build_model, model_task
from models.yolov5 import YOLOv5
from utils.paths import REPO_ROOT

FIXTURE = REPO_ROOT / "tests" / "models" / "fixtures" / "yolov5_reference.pt"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_family_is_registered_as_detectors():
    assert set(architectures("detection")) == {f"yolov5{s}" for s in "nsmlx"}
    assert model_task("yolov5s") == "detection" and model_task("resnet50") == "classification"


@pytest.mark.parametrize("arch", [f"yolov5{s}" for s in "nsmlx"])
def test_every_size_builds_and_trains_a_step(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=4)
    raw = model(torch.randn(2, 3, 64, 64))
    assert [tuple(r.shape) for r in raw] == [(2, 3, 8, 8, 9), (2, 3, 4, 4, 9), (2, 3, 2, 2, 9)]
    sum(r.square().mean() for r in raw).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    model.eval()
    with torch.no_grad():
        decoded, raw = model(torch.randn(1, 3, 64, 96))
    assert decoded.shape == (1, 3 * (8 * 12 + 4 * 6 + 2 * 3), 9)


@pytest.mark.parametrize("arch, params, gflops", [("yolov5n", 1_872_157, 4.5), ("yolov5s", 7_235_389, 16.5)])
def test_parameters_and_flops_match_the_published_ones(arch, params, gflops):
    """Published: yolov5n 1.9M / 4.5 GFLOPs, yolov5s 7.2M / 16.5 GFLOPs at 640 (80 classes). Measured here:
    1,872,157 / 4.47 and 7,235,389 / 16.43 (convolutions, 2 FLOPs per multiply-add)."""
    model = build_model(arch, num_classes=80).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 640, 640))
    assert counter.get_total_flops() / 1e9 == pytest.approx(gflops, abs=0.1)


def test_state_dict_names_are_the_references():
    keys = list(build_model("yolov5s", num_classes=80).state_dict())
    for name in ("model.0.conv.weight", "model.2.cv1.conv.weight", "model.2.m.0.cv1.conv.weight",
                 "model.9.cv2.bn.running_var", "model.24.anchors", "model.24.m.0.weight", "model.24.m.2.bias"):
        assert name in keys
    assert keys[0] == "model.0.conv.weight" and keys[-1] == "model.24.m.2.bias"


def test_the_references_state_dict_gives_the_references_outputs():
    """What a state dict does not carry (BatchNorm eps 1e-3 / momentum 0.03, strides, anchors in stride units)
    is set as the reference sets it: its outputs come back to float precision."""
    ref = torch.load(FIXTURE, weights_only=True)
    model = YOLOv5(num_classes=ref["config"]["nc"], depth_multiple=ref["config"]["depth_multiple"],
                   width_multiple=ref["config"]["width_multiple"])
    model.load_state_dict(ref["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        decoded, raw = model(ref["input"])
    for ours, theirs in zip(raw, ref["raw"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(decoded, ref["decoded"], rtol=1e-4, atol=1e-3)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}


def test_a_new_head_keeps_the_anchors_and_sets_the_prior():
    model = build_model("yolov5n", num_classes=80)
    anchors = model.get_classifier().anchors.clone()
    model.reset_classifier(3)
    head = model.get_classifier()
    assert head.nc == 3 and head.m[0].out_channels == 3 * 8 and torch.equal(head.anchors, anchors)
    assert model.get_submodule(model.classifier_name) is head
    assert float(head.m[0].bias.detach().view(3, -1)[0, 4]) < -4          # objectness prior: few objects per cell
