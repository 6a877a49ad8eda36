import math

import pytest

from policies.trainer import ScheduleConfig, TrainerConfig, lr_at
from utils.config import load_config
from utils.errors import UserError


def test_study_step_schedule_decays_after_epochs_50_and_100():
    cfg = ScheduleConfig(name="step", milestones_epochs=[50, 100], gamma=0.1)
    at = lambda epoch: lr_at(epoch * 10, steps_per_epoch=10, total_epochs=150, base_lr=0.01, cfg=cfg)
    assert at(0) == 0.01 and at(49.9) == 0.01
    assert math.isclose(at(50), 0.001) and math.isclose(at(99), 0.001)
    assert math.isclose(at(100), 0.0001) and math.isclose(at(149), 0.0001)


def test_cosine_with_linear_warmup():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=2, warmup_start_lr=0.0, final_lr=0.0)
    at = lambda step: lr_at(step, steps_per_epoch=10, total_epochs=12, base_lr=1.0, cfg=cfg)
    assert at(0) == 0.0 and math.isclose(at(10), 0.5)
    assert math.isclose(at(20), 1.0)
    assert math.isclose(at(70), 0.5)
    assert at(119) < 0.001


@pytest.mark.parametrize("path", sorted(__import__("glob").glob("configs/trainers/*.yaml")))
def test_shipped_trainer_configs_validate(path):
    assert load_config(path, TrainerConfig).epochs > 0


def test_bad_trainer_config_names_file_and_key(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("epochs: 3\noptimizer:\n  name: sgd\n  lr: 0.1\n  momentum_typo: 0.9\n")
    with pytest.raises(UserError, match=r"t\.yaml: key 'optimizer\.momentum_typo' is not a valid key"):
        load_config(bad, TrainerConfig)
    bad.write_text("epochs: three\noptimizer: {name: sgd, lr: 0.1}\n")
    with pytest.raises(UserError, match=r"key 'epochs'.*got 'three'"):
        load_config(bad, TrainerConfig)
    bad.write_text("epochs: [\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(bad, TrainerConfig)
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml", TrainerConfig)
