"""Recipe parsing: tags, variables, overrides, Markdown, the shipped recipes and the study authors' AC/DC."""
import copy
from pathlib import Path

import pytest
import torch

from models import build_model
from policies.base import TrainState
from policies.manager import Manager
from policies.modifiers import build_modifiers, build_recipe_policies
from policies.modifiers.acdc import ACDCPruningModifier
from policies.modifiers.quantization import QuantizationModifier
from policies.modifiers.training import RecipeSchedule, ScheduleWriter
from policies.qat.modules import qat_modules
from policies.recipe.load import load_recipe, load_recipe_text, parse_recipe_args, parse_recipe_text
from utils.errors import UserError
from utils.paths import RECIPE_DIR

RECIPES = sorted(RECIPE_DIR.glob("*.*"))
ACDC = next(p for p in RECIPES if p.name.startswith("acdc_resnet50"))

# The YOLOv5 sparse-transfer recipe as published (Markdown around a ```yaml block); its `model.N` submodules
# exist only in YOLOv5, so it is parsed and evaluated here, not run.
YOLO_MD = """# Sparse Transfer Learning with SparseML

For example, the Sparse Transfer Learning Recipe for YOLOv5s looks like the following:

```yaml

# General Epoch/LR Hyperparams
num_epochs: 52
init_lr: 0.0032
final_lr: 0.000384
warmup_epochs: 2
weights_warmup_lr: 0
biases_warmup_lr: 0.05
quantization_lr: 0.000002

# Quantization Params
quantization_start_epoch: 50

# modifiers
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)

  - !LearningRateFunctionModifier
    start_epoch: eval(warmup_epochs)
    end_epoch: eval(num_epochs)
    lr_func: cosine
    init_lr: eval(init_lr)
    final_lr: eval(final_lr)

  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: eval(warmup_epochs)
    lr_func: linear
    init_lr: eval(weights_warmup_lr)
    final_lr: eval(init_lr)
    param_groups: [0, 1]

  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: eval(warmup_epochs)
    lr_func: linear
    init_lr: eval(biases_warmup_lr)
    final_lr: eval(init_lr)
    param_groups: [2]

  - !SetLearningRateModifier
    start_epoch: eval(quantization_start_epoch)
    learning_rate: eval(quantization_lr)

pruning_modifiers:
  - !ConstantPruningModifier
    start_epoch: 0.0
    params: __ALL_PRUNABLE__

quantization_modifiers:
  - !QuantizationModifier
    start_epoch: eval(quantization_start_epoch)
    submodules: [ 'model.0', 'model.1', 'model.2', 'model.3', 'model.4', 'model.5', 'model.6', 'model.7', 'model.8', 'model.9', 'model.10', 'model.11', 'model.12', 'model.13', 'model.14', 'model.15', 'model.16', 'model.17', 'model.18', 'model.19', 'model.20', 'model.21', 'model.22', 'model.23' ]
```

The `pruning_modifiers` and `quantization_modifiers` sections are where the magic happens.

```bash
python3 train.py --weights zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/prunedXXX_quant-none
```
"""

SMALL = """
num_epochs: 4
lr: eval(base * 2)
base: 0.05
names: ['conv1.weight']
training_modifiers:
  - !EpochRangeModifier
    end_epoch: eval(num_epochs)
  - !SetLearningRateModifier
    start_epoch: 0
    learning_rate: eval(lr)
pruning_modifiers:
  - !ConstantPruningModifier
    params: eval(names)
"""


def arch_for(path: Path) -> str:
    return "resnet50" if "resnet50" in path.name else "yolov5n" if "yolov5" in path.name else "resnet_small"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_parses_and_builds(path):
    recipe = load_recipe(path)
    policies, epochs = build_recipe_policies(recipe, model=build_model(arch_for(path), num_classes=10),
                                             steps_per_epoch=3)
    assert epochs > 0 and policies
    assert len({p.name for p in policies}) == len(policies), "policy names must be unique"
    again = load_recipe_text(recipe.to_yaml(), source="saved")
    assert again.to_yaml() == recipe.to_yaml(), "the evaluated recipe must load back unchanged"


def test_yolov5_sparse_transfer_recipe_parses_as_published():
    recipe = load_recipe_text(YOLO_MD, source="yolo.md")
    types = [spec.type for _, _, spec in recipe.modifiers]
    assert types == ["EpochRangeModifier"] + ["LearningRateFunctionModifier"] * 3 + [
        "SetLearningRateModifier", "ConstantPruningModifier", "QuantizationModifier"]
    groups = [spec.args.get("param_groups") for _, _, spec in recipe.modifiers][1:4]
    assert groups == [None, [0, 1], [2]]
    assert recipe.groups["pruning_modifiers"][0].args["params"] == "__ALL_PRUNABLE__"
    quant = recipe.groups["quantization_modifiers"][0].args
    assert quant["start_epoch"] == 50 and quant["submodules"][-1] == "model.23"


def test_markdown_front_matter_after_a_licence_comment():
    text = "<!--\nlicence\n-->\n\n---\n" + SMALL + "\n---\n\n# Notes\n\nmore text\n"
    recipe = load_recipe_text(text, source="x.md")
    assert recipe.variables["lr"] == pytest.approx(0.1)


def test_variables_resolve_in_any_order_and_lists_pass_through():
    assert load_recipe_text(SMALL.replace("base: 0.05", "base: 5e-2")).variables["base"] == 0.05, \
        "1e-4 style numbers are numbers, not YAML 1.1 strings"
    recipe = load_recipe_text(SMALL)
    assert recipe.variables == {"num_epochs": 4, "lr": pytest.approx(0.1), "base": 0.05, "names": ["conv1.weight"]}
    assert recipe.groups["pruning_modifiers"][0].args["params"] == ["conv1.weight"]
    assert recipe.groups["training_modifiers"][1].args["learning_rate"] == pytest.approx(0.1)


def test_cycles_and_unknown_names_are_named():
    with pytest.raises(UserError, match="cycle: a -> b -> a"):
        load_recipe_text("a: eval(b)\nb: eval(a + 1)\nm_modifiers:\n  - !EpochRangeModifier\n    end_epoch: 1\n")
    with pytest.raises(UserError, match=r"unknown variable 'num_epoch' \(did you mean 'num_epochs'\?\)"):
        load_recipe_text(SMALL.replace("eval(num_epochs)", "eval(num_epoch)"))
    with pytest.raises(UserError, match=r"unknown variable 'other_var'; the recipe defines no variables \(define it"):
        load_recipe_text("modifiers:\n  - !EpochRangeModifier\n    end_epoch: eval(other_var)\n")
    with pytest.raises(UserError, match=r"unknown recipe variable 'x'; the recipe defines no variables to override"):
        load_recipe_text("modifiers:\n  - !EpochRangeModifier\n    end_epoch: 1\n", {"x": 1})


def test_malicious_expressions_in_a_recipe_are_rejected():
    for expr in ("__import__('os').system('touch /tmp/pwned')", "base.__class__", "open('x').read()"):
        with pytest.raises(UserError, match="not allowed"):
            load_recipe_text(SMALL.replace("eval(base * 2)", f"eval({expr})"))


def test_recipe_args_override_before_evaluation():
    assert parse_recipe_args('{"num_epochs": 150}') == {"num_epochs": 150}
    assert parse_recipe_args("num_epochs=150,base=1e-4,names=[a]") == {"num_epochs": 150, "base": 1e-4, "names": ["a"]}
    recipe = load_recipe_text(SMALL, '{"base": 0.5}')
    assert recipe.variables["lr"] == pytest.approx(1.0)
    with pytest.raises(UserError, match=r"unknown recipe variable 'bse' \(did you mean 'base'\?\)"):
        load_recipe_text(SMALL, "bse=1")
    with pytest.raises(UserError, match="invalid JSON"):
        parse_recipe_args("{num_epochs: 1")
    with pytest.raises(UserError, match="not 'name=value'"):
        parse_recipe_args("num_epochs")


def test_unknown_modifiers_and_arguments_suggest_the_right_name():
    model = build_model("resnet_small", num_classes=10)
    bad_type = load_recipe_text(SMALL.replace("!SetLearningRateModifier", "!SetLearningRateModifer"))
    with pytest.raises(UserError, match=r"did you mean 'SetLearningRateModifier'\?"):
        build_modifiers(bad_type, model=model, steps_per_epoch=2)
    bad_arg = load_recipe_text(SMALL.replace("learning_rate:", "learning_rat:"))
    with pytest.raises(UserError, match=r"unknown argument of SetLearningRateModifier 'learning_rat' "
                                        r"\(did you mean 'learning_rate'\?\)"):
        build_modifiers(bad_arg, model=model, steps_per_epoch=2)
    bad_param = load_recipe_text(SMALL.replace("['conv1.weight']", "['conv1.weigth']"))
    with pytest.raises(UserError, match=r"did you mean 'conv1.weight'\?"):
        build_modifiers(bad_param, model=model, steps_per_epoch=2)


def test_structural_mistakes_are_clear():
    with pytest.raises(UserError, match="no modifiers found"):
        parse_recipe_text("a: 1\n")
    with pytest.raises(UserError, match="not a '!ModifierName' entry"):
        parse_recipe_text("training_modifiers:\n  - start_epoch: 0\n")
    with pytest.raises(UserError, match="invalid recipe YAML"):
        parse_recipe_text("training_modifiers: [\n")


# ---------------------------------------------------------------- the study authors' AC/DC recipe

SPE = 10  # steps per epoch used to check the schedule


@pytest.fixture(scope="module")
def acdc():
    recipe = load_recipe(ACDC)
    modifiers = build_modifiers(recipe, model=build_model("resnet50", num_classes=1000), steps_per_epoch=SPE)
    return recipe, modifiers


def test_acdc_recipe_variables_evaluate_as_its_text_implies(acdc):
    recipe, _ = acdc
    v = recipe.variables
    assert v["num_epochs"] == 206 and v["quantization_start_epoch"] == 200 and v["quantization_end_epoch"] == 206
    assert v["pruning_epochs"] == int((206 - 6) * 0.925) == 185
    assert v["pruning_start_epoch"] == 5 and v["pruning_end_epoch"] == 190


def test_acdc_recipe_phases_params_and_length(acdc):
    recipe, modifiers = acdc
    _, epochs = build_recipe_policies(recipe, model=build_model("resnet50", num_classes=1000), steps_per_epoch=SPE)
    assert epochs == 206
    ac = next(m for m in modifiers if isinstance(m, ACDCPruningModifier))
    # 65 listed names with duplicates -> 52 distinct convs: every conv of the stages, not the stem nor fc.
    assert len(ac.args.params) == 65 and len(ac.param_names) == 52
    assert "conv1.weight" not in ac.param_names and "layer1.0.downsample.0.weight" in ac.param_names
    assert ac.mask_type.kind == "block" and ac.mask_type.block == 4 and ac.args.global_sparsity is False
    ac.plan(206 * SPE)
    phases = ac.phases()      # updates every 5 epochs from 5 to 190 (the end update included)
    assert phases[0] == (5 * SPE, "dense") and phases[1] == (10 * SPE, "compressed") and len(phases) == 38
    assert all(kind == ("compressed" if i % 2 else "dense") for i, (_, kind) in enumerate(phases[:36]))
    assert phases[-2:] == [(185 * SPE, "compressed"), (190 * SPE, "compressed")], \
        "SparseML's rule: 185 is an even phase but not before 190 - 5, so compressed; it ends compressed"
    assert ac.phase_at(12 * SPE) == (1, True) and ac.phase_at(17 * SPE) == (2, False)


def test_acdc_recipe_learning_rate_weight_decay_and_qat_epochs(acdc):
    _, modifiers = acdc
    schedule = RecipeSchedule([m for m in modifiers if isinstance(m, ScheduleWriter)])
    model = torch.nn.Linear(2, 2)
    schedule.on_fit_start(TrainState(model=model, forward_model=model, device=torch.device("cpu"), seed=0,
                                     optimizer=torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=SPE,
                                     num_epochs=206))

    def lr(epoch):
        return schedule.value_at(round(epoch * SPE), "lr", 0)

    assert lr(0) == pytest.approx(0.0512)
    assert lr(2.5) == pytest.approx(0.0512 + (0.256 - 0.0512) / 2)
    assert lr(5) == pytest.approx(0.256)
    assert lr(102.5) == pytest.approx(0.128)                  # half-way through the cosine 5 -> 200
    assert lr(199.9) == pytest.approx(0.0, abs=1e-6)
    assert lr(200) == lr(201) == pytest.approx(5e-5)          # SetLearningRate at QAT start, held 2 epochs
    assert lr(202) == pytest.approx(5e-5) and lr(204) == pytest.approx(2.5e-5)   # cosine 202 -> 206
    assert schedule.value_at(0, "weight_decay", 0) == pytest.approx(1e-5)
    assert schedule.value_at(205 * SPE, "weight_decay", 0) == pytest.approx(1e-5)
    quant = next(m for m in modifiers if isinstance(m, QuantizationModifier))
    assert quant.phase_at(199 * SPE) == {"quantize": False, "observers_frozen": False, "bn_frozen": False}
    assert quant.phase_at(200 * SPE) == {"quantize": True, "observers_frozen": False, "bn_frozen": False}
    assert quant.phase_at(201 * SPE) == {"quantize": True, "observers_frozen": True, "bn_frozen": False}
    assert quant.phase_at(202 * SPE) == {"quantize": True, "observers_frozen": True, "bn_frozen": True}
    quantized = set(quant.module_names)
    assert "conv1" in quantized and "layer4.2.conv3" in quantized and "fc" not in quantized


def test_acdc_recipe_args_change_the_schedule():
    recipe = load_recipe(ACDC, '{"num_epochs": 150}')
    assert recipe.variables["quantization_start_epoch"] == 144
    assert recipe.variables["pruning_end_epoch"] == 5 + int(144 * 0.925)


def test_the_shipped_acdc_recipe_run_short_ends_compressed_and_finishes_with_observers_frozen_at_qat_start():
    """Issue 11: 7 pruning epochs with update frequency 3 used to end on a dense phase (sparsity 0.000); SparseML's
    per-epoch rule ends compressed. quantization_observer_epochs 0 freezes observers at the QAT start."""
    args = {"num_epochs": 7, "quantization_epochs": 2, "quantization_keep_bn_epochs": 1, "lr_warmup_epochs": 1,
            "pruning_epochs_fraction": 0.8, "pruning_update_frequency": 3, "quantization_observer_epochs": 0}
    recipe = load_recipe(ACDC, args)
    # AC/DC over epochs 1..5 every 3 epochs: SparseML updates at 1 (dense), 4 and 5 (compressed).
    assert (recipe.variables["pruning_start_epoch"], recipe.variables["pruning_end_epoch"]) == (1, 5)
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=10)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    policies, epochs = build_recipe_policies(recipe, model=model, steps_per_epoch=len(loader))
    assert epochs == 7
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = TrainState(model=model, forward_model=model, optimizer=optimizer, device=torch.device("cpu"),
                       steps_per_epoch=len(loader), num_epochs=epochs, seed=0)
    Manager(state=state, policies=policies, train_loader=loader, test_loader=loader).fit()
    ac = next(p for p in policies if isinstance(p, ACDCPruningModifier))
    weights = [dict(model.named_parameters())[n] for n in ac.param_names]
    measured = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert measured == pytest.approx(0.85, abs=0.01)
    assert qat_modules(model), "QAT ran"


STAGED = """
num_epochs: 4
lr: 0.1
dense_stage:
  lr: 0.05
  training_modifiers:
    - !EpochRangeModifier
      end_epoch: 2
    - !SetLearningRateModifier
      start_epoch: 0
      learning_rate: eval(lr)
prune_stage:
  end: eval(num_epochs)
  pruning_modifiers:
    - !GMPruningModifier
      final_sparsity: 0.5
      start_epoch: 2
      end_epoch: eval(end)
      update_frequency: 1
      params: __ALL_PRUNABLE__
    - !SetLearningRateModifier
      start_epoch: 2
      learning_rate: eval(lr)
"""


def test_staged_recipes_see_their_stage_variables_over_the_global_ones():
    recipe = load_recipe_text(STAGED, {"num_epochs": 6})
    groups = recipe.groups
    assert list(groups) == ["dense_stage.training_modifiers", "prune_stage.pruning_modifiers"]
    assert groups["dense_stage.training_modifiers"][1].args["learning_rate"] == 0.05
    assert groups["prune_stage.pruning_modifiers"][0].args["end_epoch"] == 6
    assert groups["prune_stage.pruning_modifiers"][1].args["learning_rate"] == 0.1
    assert load_recipe_text(STAGED, {"lr": 0.2}).groups["dense_stage.training_modifiers"][1].args[
        "learning_rate"] == 0.2, "an override reaches a stage's variable"
    assert load_recipe_text(recipe.to_yaml()).groups == recipe.groups, "the evaluated recipe round-trips"


@pytest.mark.parametrize("text", [
    "- !EpochRangeModifier\n  end_epoch: 3\n- !SetLearningRateModifier\n  start_epoch: 0\n  learning_rate: 0.1\n",
    "!EpochRangeModifier\nend_epoch: 3\n",
], ids=["bare list", "single modifier"])
def test_a_bare_list_and_a_single_modifier_are_recipes(text):
    recipe = load_recipe_text(text)
    assert recipe.groups["modifiers"][0].type == "EpochRangeModifier"
    assert recipe.groups["modifiers"][0].args["end_epoch"] == 3


@pytest.mark.parametrize("name, message", [("SparseGPTModifier", "for transformer / language models"),
                                           ("RigLPruningModifier", "does not support yet"),
                                           ("GMPrunningModifier", "did you mean 'GMPruningModifier'")])
def test_modifiers_from_other_domains_and_typos_get_one_clear_line(name, message):
    with pytest.raises(UserError, match=message):
        build_modifiers(load_recipe_text(f"modifiers:\n  - !{name}\n    start_epoch: 0\n"),
                        model=build_model("resnet_small", num_classes=3), steps_per_epoch=2)


def test_sparseml_mobilenet_names_resolve_to_ours():
    recipe = load_recipe_text(r"""
modifiers:
  - !GMPruningModifier
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: 1
    params: ['input.conv.weight', 'sections.3.5.point.conv.weight', 're:sections\.4\.\d+\.depth\.conv\.weight',
             'classifier.fc.weight']
  - !QuantizationModifier
    start_epoch: 0
    submodules: [input, sections.0.0, sections.4]
""")
    gmp, quant = build_modifiers(recipe, model=build_model("mobilenet", num_classes=10), steps_per_epoch=2)
    # SparseML's sections hold 1, 2, 2, 6, 2 blocks: sections.3.5 is our block 11, sections.4.* are blocks 12-13.
    assert gmp.param_names == ["model.0.0.weight", "model.11.3.weight", "model.12.0.weight", "model.13.0.weight",
                               "fc.weight"]
    assert set(quant.module_names) == {"model.0.0", "model.1.0", "model.1.3", "model.12.0", "model.12.3",
                                       "model.13.0", "model.13.3"}


def test_layer_pruning_bypasses_layers_and_a_saved_model_loads_without_them(tmp_path):
    from utils.checkpoints import load_checkpoint, save_native_checkpoint

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4)
    recipe = load_recipe_text("modifiers:\n  - !EpochRangeModifier\n    end_epoch: 2\n  - !LayerPruningModifier\n"
                              "    start_epoch: 1\n    layers: ['sections.1.1', 'layer3.1']\n")
    (layer,) = [m for m in build_modifiers(recipe, model=model, steps_per_epoch=2) if m.acts]
    assert layer.layer_names == ["layer2.1", "layer3.1"]
    x = torch.randn(2, 3, 32, 32)
    state = TrainState(model=model, forward_model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                       device=torch.device("cpu"), steps_per_epoch=2, num_epochs=2, seed=0)
    model.eval()
    full = model(x)
    layer.on_fit_start(state)
    assert layer.removed == [] and torch.equal(model(x), full)
    state.step = 2
    layer.on_batch_start(state)
    assert layer.removed == ["layer2.1", "layer3.1"]
    bypassed = model(x)
    reference = copy.deepcopy(model)
    for hook_owner in ("layer2", "layer3"):
        getattr(reference, hook_owner)[1] = torch.nn.Identity()
    assert torch.allclose(bypassed, reference(x), atol=1e-6) and not torch.allclose(bypassed, full)
    save_native_checkpoint(tmp_path / "m.pt", model, arch="resnet18", arch_kwargs={},
                           extra={"removed_layers": layer.removed})
    loaded = load_checkpoint(tmp_path / "m.pt", keep_classifier=True).model.eval()
    assert isinstance(loaded.layer2[1], torch.nn.Identity) and torch.allclose(loaded(x), bypassed, atol=1e-6)
