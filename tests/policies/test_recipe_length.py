"""Issue 27 item 3: a recipe shortened through num_epochs keeps its phases in proportion (the seed-001 YOLOv5 recipe
ran 50 epochs and never started QAT when asked for 3)."""
import logging

from models import build_model
from policies.modifiers import build_recipe_policies
from policies.recipe.load import load_recipe
from utils.paths import RECIPE_DIR

YOLO = RECIPE_DIR / "yolov5_sparse_transfer.yaml"


def test_num_epochs_scales_the_phases_set_as_plain_numbers(caplog):
    with caplog.at_level(logging.WARNING, logger="policies.recipe"):
        recipe = load_recipe(YOLO, '{"num_epochs": 3}')
    v = recipe.variables
    assert v["num_epochs"] == 3 and abs(v["warmup_epochs"] - 2 * 3 / 52) < 1e-6
    # QAT ran the last 2 of 52 epochs: in proportion 0.12 of an epoch, kept one whole epoch
    assert v["quantization_start_epoch"] == 2
    assert "num_epochs 52 -> 3 puts quantization_start_epoch at or past the end; scaled with it: warmup_epochs 2 -> " \
        "0.115385, quantization_start_epoch 50 -> 2" in caplog.text
    _, epochs = build_recipe_policies(recipe, model=build_model("yolov5n", num_classes=2), steps_per_epoch=4)
    assert epochs == 3


def test_a_short_run_still_gets_its_qat_phase_and_an_int8_model():
    """`--recipe_args '{"num_epochs": 2}'` on the seed-001 recipe: in proportion QAT would start at epoch 1.92 of 2,
    which a run of 5 optimizer steps an epoch rounds to its end (no QAT, no INT8); it starts at epoch 1 instead."""
    recipe = load_recipe(YOLO, '{"num_epochs": 2}')
    assert recipe.variables["quantization_start_epoch"] == 1
    policies, epochs = build_recipe_policies(recipe, model=build_model("yolov5n", num_classes=2), steps_per_epoch=5)
    qat = [p for p in policies if type(p).__name__ == "QuantizationModifier"]
    assert epochs == 2 and len(qat) == 1 and qat[0].start_step == 5
    one = load_recipe(YOLO, '{"num_epochs": 1}').variables
    assert one["quantization_start_epoch"] == 0                # one epoch asked for: it is all QAT


def test_a_recipe_whose_phases_fit_the_new_length_runs_as_written():
    """SparseML's AC/DC recipe documents --recipe_args '{"num_epochs":150}': its warm-up and QAT lengths stay."""
    acdc = load_recipe(RECIPE_DIR / "acdc_resnet50_imagenet_pruned85_quant.md", '{"num_epochs": 150}').variables
    assert (acdc["lr_warmup_epochs"], acdc["quantization_epochs"], acdc["quantization_start_epoch"]) == (5, 6, 144)
    longer = load_recipe(YOLO, '{"num_epochs": 100}').variables
    assert (longer["warmup_epochs"], longer["quantization_start_epoch"]) == (2, 50)


def test_phases_the_user_sets_or_that_follow_num_epochs_are_left_alone():
    given = load_recipe(YOLO, '{"num_epochs": 6, "warmup_epochs": 1, "quantization_start_epoch": 5}').variables
    assert (given["warmup_epochs"], given["quantization_start_epoch"]) == (1, 5)
    demo = load_recipe(RECIPE_DIR / "demo_sparse_transfer.yaml", {"num_epochs": 4}).variables
    assert demo["quantization_start_epoch"] == 2          # eval(num_epochs - 2): it follows by itself
    assert load_recipe(YOLO).variables["quantization_start_epoch"] == 50
