import math

import numpy as np
import pytest

from policies.trainer import ScheduleConfig, TrainerConfig, lr_at, momentum_at, warmup_epochs
from utils.config import load_config
from utils.errors import UserError
from utils.paths import TRAINER_DIR


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


def test_yolov5_warmup_momentum_bias_lr_and_minimum_steps():
    """YOLOv5's warm-up: over max(warmup epochs, 100 steps) momentum rises 0.8 -> 0.937, the bias group's lr falls
    from 0.1 and the others' rises from 0 to the schedule's value where the warm-up ends."""
    import torch

    from models import build_model
    from policies.base import TrainState
    from policies.trainer import LRSchedulePolicy
    from utils.detection.task import yolov5_param_groups

    cfg = ScheduleConfig(name="cosine", warmup_epochs=3, warmup_min_steps=100, warmup_momentum=0.8,
                         warmup_bias_lr=0.1, final_lr=0.0001)
    spe = 20                                            # 3 epochs = 60 steps < 100: the warm-up lasts 5 epochs
    m = lambda step: momentum_at(step, steps_per_epoch=spe, momentum=0.937, cfg=cfg)
    assert m(0) == 0.8 and math.isclose(m(50), 0.8 + 0.137 / 2) and m(100) == 0.937 and m(400) == 0.937
    end = lr_at(100, steps_per_epoch=spe, total_epochs=50, base_lr=0.01, cfg=cfg)
    assert end < 0.01 and math.isclose(lr_at(50, steps_per_epoch=spe, total_epochs=50, base_lr=0.01, cfg=cfg), end / 2)
    bias = lambda step: lr_at(step, steps_per_epoch=spe, total_epochs=50, base_lr=0.01, cfg=cfg, start_lr=0.1)
    assert bias(0) == 0.1 and math.isclose(bias(50), (0.1 + end) / 2) and math.isclose(bias(100), end)

    model = build_model("yolov5n", num_classes=2)
    optimizer = torch.optim.SGD(yolov5_param_groups(model, 5e-4), lr=0.01, momentum=0.937, nesterov=True)
    state = TrainState(model=model, forward_model=model, optimizer=optimizer, device=torch.device("cpu"),
                       steps_per_epoch=spe, num_epochs=50, seed=0, step=50)
    LRSchedulePolicy(base_lr=0.01, cfg=cfg, momentum=0.937).on_batch_start(state)
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert math.isclose(lrs[0], end / 2) and lrs[0] == lrs[1] and math.isclose(lrs[2], (0.1 + end) / 2)
    assert all(math.isclose(g["momentum"], m(50)) for g in optimizer.param_groups)


def test_a_warmup_counted_in_batches_under_accumulation():
    """YOLOv5's 100 warm-up iterations are batches: with 4 batches per optimizer step, 25 steps."""
    cfg = ScheduleConfig(name="linear", warmup_epochs=3, warmup_min_batches=100, warmup_momentum=0.8, final_lr=1e-4)
    spe, batches = 5, 20                                # 3 epochs = 60 batches < 100: 5 epochs = 25 steps
    assert warmup_epochs(cfg, spe, batches) == 5.0
    m = lambda step: momentum_at(step, steps_per_epoch=spe, momentum=0.937, cfg=cfg, batches_per_epoch=batches)
    assert m(0) == 0.8 and m(24) < 0.937 and m(25) == 0.937
    lr = lambda step: lr_at(step, steps_per_epoch=spe, total_epochs=50, base_lr=0.01, cfg=cfg,
                            batches_per_epoch=batches)
    assert math.isclose(lr(25), 0.01 + (1e-4 - 0.01) * 5 / 50) and math.isclose(lr(12.5), lr(25) / 2)
    assert warmup_epochs(cfg.model_copy(update={"warmup_min_batches": 0, "warmup_min_steps": 100}), spe, batches) == 20


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_per_epoch_schedules_give_yolov5s_learning_rates(name):
    """yolov5_finetune(_cos).yaml against YOLOv5's train.py loop (lr0 0.01, lrf 0.01, 3 warm-up epochs or 100
    batches, interpolated per batch to lr0 x lf(epoch); after it LambdaLR's lr0 x lf(epoch)), every batch of 50
    epochs of 7 batches, the weights' group (from 0) and the biases' (from 0.1)."""
    config = "yolov5_finetune.yaml" if name == "linear" else "yolov5_finetune_cos.yaml"
    cfg = load_config(TRAINER_DIR / config, TrainerConfig).schedule
    epochs, nb, lr0, lrf = 50, 7, 0.01, 0.01
    if name == "linear":
        lf = lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf
    else:
        lf = lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    nw = max(round(3 * nb), 100)
    for ni in range(epochs * nb):
        epoch = ni // nb
        if ni <= nw:
            want = [float(np.interp(ni, [0, nw], [start, lr0 * lf(epoch)])) for start in (0.0, 0.1)]
        else:
            want = [lr0 * lf(epoch)] * 2
        got = [lr_at(ni, steps_per_epoch=nb, total_epochs=epochs, base_lr=lr0, cfg=cfg, start_lr=start,
                     batches_per_epoch=nb) for start in (0.0, 0.1)]
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15), (ni, got, want)
        momentum = float(np.interp(ni, [0, nw], [0.8, 0.937])) if ni <= nw else 0.937
        assert momentum_at(ni, steps_per_epoch=nb, momentum=0.937, cfg=cfg, batches_per_epoch=nb) \
            == pytest.approx(momentum, rel=1e-12)


def test_configs_without_the_yolov5_warmup_keep_their_schedule_bit_for_bit():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1, final_lr=0.0002)
    values = [lr_at(s, steps_per_epoch=7, total_epochs=10, base_lr=0.02, cfg=cfg) for s in range(70)]
    assert values[:7] == [0.02 * s / 7 for s in range(7)]
    assert momentum_at(3, steps_per_epoch=7, momentum=0.9, cfg=cfg) == 0.9


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


def test_linear_schedule_is_yolov5s_default_line():
    cfg = ScheduleConfig(name="linear", final_lr=0.0001)
    at = lambda epoch: lr_at(epoch * 10, steps_per_epoch=10, total_epochs=50, base_lr=0.01, cfg=cfg)
    assert at(0) == 0.01 and math.isclose(at(25), (0.01 + 0.0001) / 2) and math.isclose(at(50), 0.0001)


def test_the_optimizer_takes_the_parameter_groups_the_task_wants():
    import torch

    from policies.tasks import ClassificationTask
    from policies.trainer import OptimizerConfig, build_optimizer

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    cfg = OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3)

    class TwoGroups(ClassificationTask):
        def param_groups(self, model, weight_decay):
            params = list(model.parameters())
            return [{"params": params[:1], "weight_decay": weight_decay}, {"params": params[1:], "weight_decay": 0.0}]

    assert len(build_optimizer(model, cfg, task=ClassificationTask()).param_groups) == 1     # the config's
    groups = build_optimizer(model, cfg, task=TwoGroups()).param_groups
    assert [len(g["params"]) for g in groups] == [1, 3] and [g["weight_decay"] for g in groups] == [1e-3, 0.0]
