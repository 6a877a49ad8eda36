"""A run records the settings that drove it: a recipe's learning rate and weight decay, not the trainer config's."""
import csv
import json

import yaml

from tests.runs.test_bad_inputs import train

RECIPE = """
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: 2
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: 2
    lr_func: linear
    init_lr: 0.01
    final_lr: 0.001
  - !SetWeightDecayModifier
    start_epoch: 0
    weight_decay: 0.0007
"""


def test_a_recipe_run_records_the_recipes_learning_rate_and_weight_decay(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    # the trainer config says lr 0.05, no weight decay; the recipe trains from 0.01 down with decay 0.0007
    result = train(tmp_path, "--dset", "synthetic", "--arch", "resnet_small", "--recipe", str(recipe),
                   "--exp_name", "r", "--max_train_samples", "32")
    run = tmp_path / "exp" / "r"
    recorded = json.loads((run / "result.json").read_text())
    assert recorded["lr_initial"] == recorded["lr"] == 0.01        # the linear decay starts at its peak
    assert recorded["weight_decay"] == 0.0007 and result["lr"] == 0.01
    derived = yaml.safe_load((run / "config.yaml").read_text())["derived"]
    assert derived["lr"] == "recipe" and derived["weight_decay"] == "recipe"
    with open(tmp_path / "exp" / "results.csv", newline="") as f:
        assert float(next(csv.DictReader(f))["lr"]) == 0.01


def test_a_run_without_recipe_records_the_trainer_configs_learning_rate(tmp_path):
    train(tmp_path, "--dset", "synthetic", "--arch", "resnet_small", "--exp_name", "t", "--max_train_samples", "16")
    recorded = json.loads((tmp_path / "exp" / "t" / "result.json").read_text())
    assert recorded["lr"] == recorded["lr_initial"] == 0.05
