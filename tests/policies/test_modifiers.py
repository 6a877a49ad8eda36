"""Recipe modifiers on a tiny model through the real Manager: GMP, AC/DC, constant masks, LR, resume."""
import pytest
import torch

from policies.loggers import CheckpointSaver
from policies.modifiers.acdc import ACDCPruningModifier
from policies.modifiers.pruning import GMPruningModifier, interpolate
from policies.trainer import OptimizerConfig
from utils.sparsity import layer_mask, make_masks, parse_mask_type

PARAMS = "['conv1.weight', 'conv2.weight']"


GMP = f"""
num_epochs: 3
training_modifiers:
  - !EpochRangeModifier
    end_epoch: eval(num_epochs)
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
    lr_func: cosine
    init_lr: 0.05
    final_lr: 0.001
pruning_modifiers:
  - !GMPruningModifier
    init_sparsity: 0.05
    final_sparsity: 0.8
    start_epoch: 0
    end_epoch: 2
    update_frequency: eval(1 / 3)
    inter_func: cubic
    params: {PARAMS}
"""

ACDC = f"""
training_modifiers:
  - !EpochRangeModifier
    end_epoch: 7
  - !SetLearningRateModifier
    start_epoch: 0
    learning_rate: 0.05
pruning_modifiers:
  - !ACDCPruningModifier
    compression_sparsity: 0.75
    start_epoch: 1
    end_epoch: 6
    update_frequency: 1
    global_sparsity: false
    params: {PARAMS}
"""


def test_gmp_follows_the_cubic_curve_and_reaches_final_sparsity_exactly_at_end_epoch(make_manager):
    manager, policies, probe = make_manager(GMP)
    manager.fit()
    gmp = next(p for p in policies if isinstance(p, GMPruningModifier))
    assert gmp.end_step == 6 and manager.state.steps_per_epoch == 3
    sizes = {"conv1.weight": 8 * 4 * 9, "conv2.weight": 8 * 8 * 9}
    for step, zeros in probe.zeros.items():
        target = interpolate(min(step, 6) / 3, 0, 2, 0.05, 0.8, "cubic")
        assert target == pytest.approx(0.05 + 0.75 * (1 - (1 - min(step, 6) / 6) ** 3))
        for name, n in sizes.items():
            assert zeros[name] == round(target * n), (step, name)
    assert probe.zeros[5]["conv2.weight"] < round(0.8 * 576) == probe.zeros[6]["conv2.weight"]
    assert probe.zeros[9] == probe.zeros[6], "masks held after end_epoch (leave_enabled)"


def test_gmp_per_layer_mapping_and_global_scope(make_manager):
    per_layer = GMP.replace("final_sparsity: 0.8", "final_sparsity: {0.5: ['conv1.weight'], 0.9: ['conv2.weight']}")
    manager, _, probe = make_manager(per_layer.replace(f"params: {PARAMS}", ""))
    manager.fit()
    assert probe.zeros[9] == {"conv1.weight": round(0.5 * 288), "conv2.weight": round(0.9 * 576)}
    glob = GMP.replace("!GMPruningModifier", "!GlobalMagnitudePruningModifier")
    manager, _, probe = make_manager(glob)
    manager.fit()
    assert sum(probe.zeros[9].values()) == round(0.8 * (288 + 576))
    assert probe.zeros[9]["conv1.weight"] != round(0.8 * 288) or probe.zeros[9]["conv2.weight"] != round(0.8 * 576)


def test_acdc_alternates_dense_and_compressed_phases_and_ends_compressed(make_manager):
    manager, policies, probe = make_manager(ACDC)
    ac = next(p for p in policies if isinstance(p, ACDCPruningModifier))
    manager.fit()
    # SparseML's rule: epoch 1 dense, 2 compressed, 3 dense, 4 compressed, 5 compressed (5 < 6 - 1 fails), 6 end.
    assert ac.phases() == [(3, "dense"), (6, "compressed"), (9, "dense"), (12, "compressed"), (15, "compressed"),
                           (18, "compressed")]
    compressed = {"conv1.weight": 216, "conv2.weight": 432}
    for epoch in range(7):
        zeros = probe.zeros[3 * epoch + 2]          # after the second step of the epoch
        if epoch in (2, 4, 5, 6):
            assert zeros == compressed, epoch
        else:
            assert all(z == 0 for z in zeros.values()), epoch
    # The first optimizer step of a dense phase after a compressed one (step 9) is followed by zeroed momentum.
    assert probe.momentum_zero[10] and not probe.momentum_zero[9]
    # The final masks are the last compressed phase's (epochs 4-6 share them).
    assert probe.zeros[12] == probe.zeros[21]


@pytest.mark.parametrize("mask_type", ["block4", "2:4"])
def test_acdc_and_gmp_with_structured_masks(mask_type, make_manager):
    manager, _, _ = make_manager(ACDC.replace("global_sparsity: false", f"mask_type: '{mask_type}'")
                                 .replace("0.75", "0.5"))
    manager.fit()
    w = manager.state.model.conv2.weight.detach()
    groups = (w != 0).movedim(1, -1).reshape(-1, 4).sum(1)
    if mask_type == "block4":
        assert set(groups.tolist()) <= {0, 4}
    else:
        assert set(groups.tolist()) == {2}


def test_structured_mask_math():
    torch.manual_seed(0)
    w = torch.randn(16, 10, 3, 3)       # 10 input channels: the last block of 4 is partial
    m = layer_mask(w, 0.5, parse_mask_type("block4"))
    blocks = m.movedim(1, -1)
    assert torch.equal(blocks[..., :4].all(-1), blocks[..., :4].any(-1))
    assert torch.equal(blocks[..., 8:].all(-1), blocks[..., 8:].any(-1))
    assert int((~blocks[..., :8]).sum()) % 4 == 0
    nm = layer_mask(torch.randn(8, 8), 0.5, parse_mask_type("2:4"))
    assert (nm.reshape(-1, 4).sum(1) == 2).all()
    partial = layer_mask(torch.randn(8, 8), 0.25, parse_mask_type("2:4"))
    assert int((~partial).sum()) == 16 and (partial.reshape(-1, 4).sum(1) >= 2).all()
    params = {"a": torch.randn(4, 8), "b": torch.randn(6, 12)}
    masks = make_masks(params, 0.6, mask_type=parse_mask_type("unstructured"), global_scope=True)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * 104)
    with pytest.raises(ValueError, match="at most"):
        layer_mask(torch.randn(8, 8), 0.8, parse_mask_type("2:4"))
    with pytest.raises(ValueError, match="unknown mask_type"):
        parse_mask_type("block")


CONSTANT = """
training_modifiers:
  - !EpochRangeModifier
    end_epoch: 3
  - !LearningRateModifier
    start_epoch: 0
    lr_class: MultiStepLR
    lr_kwargs: {milestones: [2], gamma: 0.1}
    init_lr: 0.05
  - !SetWeightDecayModifier
    start_epoch: 0
    weight_decay: 0.001
pruning_modifiers:
  - !ConstantPruningModifier
    start_epoch: 0
    params: __ALL_PRUNABLE__
"""


@pytest.mark.parametrize("optimizer", [OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, nesterov=True),
                                       OptimizerConfig(name="adamw", lr=0.05, weight_decay=0.05)],
                         ids=["sgd", "adamw"])
def test_constant_pruning_preserves_masks_bit_for_bit(optimizer, make_manager):
    manager, _, _ = make_manager(CONSTANT, optimizer=optimizer,
                                 prune_at_start={"conv1.weight": 0.6, "conv2.weight": 0.9})
    params = dict(manager.state.model.named_parameters())
    before = {n: params[n].detach().clone() for n in ("conv1.weight", "conv2.weight", "fc.weight")}
    manager.fit()
    for name, old in before.items():
        assert torch.equal(params[name] == 0, old == 0), name
        assert not torch.equal(params[name], old), f"{name}: kept weights must train"
    group = manager.state.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.005) and group["weight_decay"] == pytest.approx(0.001)


def test_lr_modifiers_target_param_groups(make_manager):
    recipe = """
training_modifiers:
  - !EpochRangeModifier
    end_epoch: 2
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: 1
    lr_func: linear
    init_lr: 0.1
    final_lr: 0.0
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: 2
    lr_func: linear
    init_lr: 0.0
    final_lr: 0.1
    param_groups: [1]
"""
    cfg = OptimizerConfig(name="sgd", lr=0.3, momentum=0.9, no_weight_decay_on_bn_and_bias=True)
    manager, policies, _ = make_manager(recipe, optimizer=cfg)
    schedule = policies[0]
    schedule.on_fit_start(manager.state)
    # The writer that ends later writes last on a shared step (SparseML's manager order): group 1 follows it.
    assert schedule.value_at(0, "lr", 0) == pytest.approx(0.1) and schedule.value_at(0, "lr", 1) == 0.0
    assert schedule.value_at(2, "lr", 0) == pytest.approx(0.1 / 3)
    assert schedule.value_at(2, "lr", 1) == pytest.approx(0.1 * 2 / 6)
    assert schedule.value_at(4, "lr", 0) == pytest.approx(0.0), "after its end its last value holds"
    manager.fit()
    assert manager.state.optimizer.param_groups[1]["lr"] == pytest.approx(0.1 * 5 / 6)


@pytest.mark.parametrize("recipe", [GMP, ACDC], ids=["gmp", "acdc"])
def test_resume_in_the_middle_of_a_schedule_equals_an_uninterrupted_run(tmp_path, recipe, make_manager):
    full, _, _ = make_manager(recipe)
    full_metrics = full.fit()

    first, _, _ = make_manager(recipe)
    first.policies.append(CheckpointSaver(tmp_path / "ck.pt", first.training_state))
    first.state.num_epochs = 1 if recipe is GMP else 3    # killed mid-GMP / inside a compressed AC/DC phase
    first.fit()
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)

    second, _, _ = make_manager(recipe)
    second.restore(ck)
    resumed_metrics = second.fit()
    for (name, a), b in zip(full.state.model.state_dict().items(), second.state.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed_metrics["test_acc"] == full_metrics["test_acc"]
    assert second.state.step == full.state.step


# One minimal use of every registered modifier: each runs and a resume after epoch 1 equals no stop.
EVERY = {
    "EpochRangeModifier": "",
    "SetLearningRateModifier": "  - !SetLearningRateModifier\n    start_epoch: 1\n    learning_rate: 0.01\n",
    "SetWeightDecayModifier": "  - !SetWeightDecayModifier\n    start_epoch: 0.5\n    weight_decay: 0.01\n",
    "LearningRateFunctionModifier": ("  - !LearningRateFunctionModifier\n    start_epoch: 0\n    end_epoch: 2\n"
                                     "    lr_func: cosine\n    init_lr: 0.05\n    final_lr: 0.0\n"),
    "LearningRateModifier": ("  - !LearningRateModifier\n    start_epoch: 0\n    lr_class: StepLR\n"
                             "    lr_kwargs: {step_size: 0.5, gamma: 0.5}\n    init_lr: 0.05\n"),
    "ConstantPruningModifier": "  - !ConstantPruningModifier\n    params: ['re:conv.*weight']\n",
    "GMPruningModifier": ("  - !GMPruningModifier\n    final_sparsity: 0.5\n    start_epoch: 0\n    end_epoch: 2\n"
                          f"    update_frequency: 0.5\n    params: {PARAMS}\n"),
    "MagnitudePruningModifier": ("  - !MagnitudePruningModifier\n    final_sparsity: 0.5\n    start_epoch: 0\n"
                                 f"    end_epoch: 1.5\n    update_frequency: 0.5\n    params: {PARAMS}\n"),
    "GlobalMagnitudePruningModifier": ("  - !GlobalMagnitudePruningModifier\n    final_sparsity: 0.5\n"
                                       "    start_epoch: 0\n    end_epoch: 2\n    update_frequency: 1\n"
                                       f"    params: {PARAMS}\n"),
    "ACDCPruningModifier": ("  - !ACDCPruningModifier\n    compression_sparsity: 0.5\n    start_epoch: 0\n"
                            f"    end_epoch: 2\n    update_frequency: 1\n    params: {PARAMS}\n"),
    "DistillationModifier": ("  - !DistillationModifier\n    start_epoch: 0.5\n    end_epoch: 2\n"
                             "    hardness: 0.7\n    temperature: 2.0\n    teacher: self\n"),
    "OBSPruningModifier": ("  - !OBSPruningModifier\n    init_sparsity: 0.1\n    final_sparsity: 0.5\n"
                           "    start_epoch: 0\n    end_epoch: 2\n    update_frequency: 1\n    num_grads: 4\n"
                           f"    damp: 0.001\n    fisher_block_size: 8\n    params: {PARAMS}\n"),
    "MFACPruningModifier": ("  - !MFACPruningModifier\n    init_sparsity: 0.1\n    final_sparsity: 0.5\n"
                            "    start_epoch: 0\n    end_epoch: 2\n    update_frequency: 1\n    num_grads: 4\n"
                            f"    damp: 0.001\n    fisher_block_size: 16\n    params: {PARAMS}\n"),
    "LayerPruningModifier": "  - !LayerPruningModifier\n    start_epoch: 1\n    layers: ['conv2']\n",
    "QuantizationModifier": ("  - !QuantizationModifier\n    start_epoch: 0.5\n"
                             "    disable_quantization_observer_epoch: 1.5\n    freeze_bn_stats_epoch: 1\n"),
}


def test_every_registered_modifier_has_a_resume_test():
    from policies.modifiers import MODIFIERS
    assert sorted(EVERY) == MODIFIERS.names()


@pytest.mark.parametrize("name", sorted(EVERY))
def test_every_modifier_runs_and_resumes_exactly(tmp_path, name, make_manager):
    recipe = "modifiers:\n  - !EpochRangeModifier\n    end_epoch: 2\n" + EVERY[name]
    full, _, _ = make_manager(recipe)
    full.fit()
    first, _, _ = make_manager(recipe)
    first.policies.append(CheckpointSaver(tmp_path / "ck.pt", first.training_state))
    first.state.num_epochs = 1
    first.fit()
    second, _, _ = make_manager(recipe)
    second.restore(torch.load(tmp_path / "ck.pt", weights_only=True))
    second.fit()
    for (key, a), b in zip(full.state.model.state_dict().items(), second.state.model.state_dict().values()):
        assert torch.equal(a, b), key
    for ga, gb in zip(full.state.optimizer.param_groups, second.state.optimizer.param_groups):
        assert ga["lr"] == gb["lr"] and ga["weight_decay"] == gb["weight_decay"]


def test_gmp_without_leave_enabled_releases_the_masks_after_end_epoch(make_manager):
    manager, _, probe = make_manager(GMP.replace("inter_func: cubic", "inter_func: linear\n    leave_enabled: false"))
    manager.fit()
    assert probe.zeros[6]["conv2.weight"] == round(0.8 * 576)
    assert probe.zeros[9]["conv2.weight"] < probe.zeros[6]["conv2.weight"], "released weights train again"
