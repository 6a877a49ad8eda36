import torch
from torch import nn

from utils.sparsity import (
    apply_masks_,
    check_masks_match_zeros,
    global_magnitude_masks,
    global_sparsity,
    layer_sparsity,
    magnitude_mask,
    mask_grads_,
    masks_from_zeros,
    prunable_parameters,
)


def test_magnitude_mask_prunes_exact_count_with_ties():
    w = torch.tensor([[0.5, -0.5, 0.1], [0.1, 0.0, 2.0]])
    mask = magnitude_mask(w, 0.5)
    assert (~mask).sum().item() == 3
    assert mask[1, 2] and not mask[1, 1]  # the largest kept, the zero pruned


def test_global_magnitude_masks_use_one_threshold():
    params = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 20.0])}
    masks = global_magnitude_masks(params, 0.5)
    assert masks["a"].tolist() == [False, False, False, True]
    assert masks["b"].tolist() == [True, True]


def test_sparsity_measures_and_match_check():
    w = {"x": torch.tensor([0.0, 1.0, 0.0, 2.0]), "y": torch.tensor([0.0, 3.0])}
    assert layer_sparsity(w) == {"x": 0.5, "y": 0.5}
    assert global_sparsity(w) == 0.5
    masks = masks_from_zeros(w)
    assert check_masks_match_zeros(w, masks) == []
    masks["x"][1] = False
    assert check_masks_match_zeros(w, masks) == ["x"]


def test_apply_masks_and_mask_grads():
    p = nn.Parameter(torch.ones(4))
    p.grad = torch.ones(4)
    masks = {"p": torch.tensor([True, False, True, False])}
    apply_masks_({"p": p}, masks)
    mask_grads_({"p": p}, masks)
    assert p.tolist() == [1, 0, 1, 0] and p.grad.tolist() == [1, 0, 1, 0]


def test_prunable_parameters_excludes_prefix():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    assert list(prunable_parameters(model)) == ["0.weight", "3.weight"]
    assert list(prunable_parameters(model, exclude_prefixes=["3"])) == ["0.weight"]


def test_masks_of_channels_last_weights_equal_those_of_contiguous_ones():
    """--channels_last keeps conv weights NHWC in memory; every mask type must give the same mask for them."""
    from utils.sparsity.structured import layer_mask, make_masks, parse_mask_type

    torch.manual_seed(0)
    weight = torch.randn(8, 16, 3, 3)
    nhwc = weight.to(memory_format=torch.channels_last)
    assert not nhwc.is_contiguous()
    for kind in ("unstructured", "block4", "2:4"):
        mask_type = parse_mask_type(kind)
        assert torch.equal(layer_mask(nhwc, 0.5, mask_type), layer_mask(weight, 0.5, mask_type)), kind
        for global_scope in (False, True):
            got = make_masks({"w": nhwc, "v": nhwc * 2}, 0.5, mask_type=mask_type, global_scope=global_scope)
            want = make_masks({"w": weight, "v": weight * 2}, 0.5, mask_type=mask_type, global_scope=global_scope)
            assert all(torch.equal(got[k], want[k]) for k in want), (kind, global_scope)
