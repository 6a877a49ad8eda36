"""Every registered architecture: forward+backward, head rebuild, features, any input size, key layouts."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from models import architectures, build_model
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _input_side(model: nn.Module) -> int:
    return 32 if model.default_input_size <= 32 else 64


@pytest.mark.parametrize("arch", architectures("classification"))
def test_forward_backward_head_and_features(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=5)
    side = _input_side(model)
    x = torch.randn(2, 3, side, side)
    out = model(x)
    assert out.shape == (2, 5)
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:3]}"

    head = getattr(model, model.classifier_name)
    assert isinstance(head, nn.Linear) and head.in_features == model.num_features
    model.eval()
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features)
    assert torch.allclose(head(feats), model(x), atol=1e-5)

    model.reset_classifier(3)
    new_head = getattr(model, model.classifier_name)
    assert isinstance(new_head, nn.Linear) and new_head is not head
    assert (new_head.in_features, new_head.out_features) == (model.num_features, 3)
    assert model(x).shape == (2, 3)
    # Any spatial size, also non-square and not a multiple of the stride.
    assert model(torch.randn(1, 3, side - 5, side + 9)).shape == (1, 3)
    assert model.default_input_size in (32, 224)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_resnet_state_dict_keys_equal_torchvision(arch):
    ours = build_model(arch, num_classes=1000)
    theirs = getattr(torchvision.models, arch)(weights=None)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(ours.state_dict()[k].shape == v.shape for k, v in theirs.state_dict().items())


def test_resnet_outputs_equal_torchvision_with_the_same_weights():
    ours = build_model("resnet18", num_classes=10).eval()
    theirs = torchvision.models.resnet18(num_classes=10).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_stem_pool_pad_is_tensorflow_same_pooling_and_adds_no_keys():
    plain = build_model("resnet18", num_classes=4)
    padded = build_model("resnet18", num_classes=4, stem_pool_pad=[0, 1, 0, 1])
    assert list(plain.state_dict()) == list(padded.state_dict())
    x = torch.rand(1, 8, 32, 32)
    expected = F.max_pool2d(F.pad(x, (0, 1, 0, 1)), kernel_size=3, stride=2, padding=0)
    assert torch.equal(padded.maxpool(x), expected)
    assert not torch.equal(plain.maxpool(x), expected)
    padded.load_state_dict(plain.state_dict())
    assert padded(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    with pytest.raises(ValueError, match="stem_pool_pad"):
        build_model("resnet18", num_classes=4, stem_pool_pad=[1, 1])


def test_mobilenet_key_layout_matches_the_acdc_str_code():
    model = build_model("mobilenet", num_classes=7)
    sd = model.state_dict()
    assert sd["model.0.0.weight"].shape == (32, 3, 3, 3)
    assert sd["model.1.0.weight"].shape == (32, 1, 3, 3)  # depthwise
    assert sd["model.1.3.weight"].shape == (64, 32, 1, 1)  # pointwise
    assert sd["model.13.3.weight"].shape == (1024, 1024, 1, 1)
    assert "model.1.4.running_var" in sd and "model.14.weight" not in sd
    assert sd["fc.weight"].shape == (7, 1024)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 27
    half = build_model("mobilenet", num_classes=7, width_mult=0.5)
    assert half.num_features == 512 and half.state_dict()["model.0.0.weight"].shape == (16, 3, 3, 3)


def test_small_resnets_take_their_widths_and_depths():
    small = build_model("resnet_small", num_classes=10)
    assert small.default_input_size == 32 and small.num_features == 64
    assert len(small.layer1) == len(small.layer2) == len(small.layer3) == 1
    r20 = build_model("resnet20", num_classes=10)
    assert len(r20.layer1) == len(r20.layer3) == 3
    custom = build_model("resnet_small", num_classes=2, widths=[8, 16], blocks=[2, 1])
    assert custom.num_features == 16 and len(custom.layer1) == 2 and not hasattr(custom, "layer3")
    assert custom(torch.randn(1, 3, 28, 28)).shape == (1, 2)


def test_build_model_errors_are_user_errors():
    with pytest.raises(UserError, match="did you mean 'resnet50'"):
        build_model("resnet5O", num_classes=3)
    with pytest.raises(UserError, match="does not accept arch_kwargs \\['depth'\\]"):
        build_model("resnet50", num_classes=3, depth=3)
