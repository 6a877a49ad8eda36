"""The weights' moving average: YOLOv5's formula, as sparse as the model, evaluated, resumed, off under QAT."""
import math

import pytest
import torch

from policies.base import Policy, TrainState
from policies.ema import EmaConfig, EmaPolicy, ema_decay
from policies.loggers import CheckpointSaver
from policies.masking import MaskPolicy
from policies.trainer import OptimizerConfig, TrainerConfig
from tests.policies.test_modifiers import GMP

SGD = OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
FAST = EmaConfig(decay=0.9, tau_steps=2.0)   # a tiny run's steps move the average visibly


class StateRecorder(Policy):
    """The model's state dict after every optimizer step (after the masks, before the average)."""

    name = "recorder"

    def __init__(self):
        self.states = []

    def on_fit_start(self, state: TrainState) -> None:
        self.states.append({k: v.clone() for k, v in state.model.state_dict().items()})

    def on_after_optimizer_step(self, state: TrainState) -> None:
        self.states.append({k: v.clone() for k, v in state.model.state_dict().items()})


def with_ema(manager, cfg=FAST):
    """Append a recorder and the average after the manager's policies (as a run puts the average last)."""
    recorder = StateRecorder()
    ema = EmaPolicy(cfg, mask_policies=[p for p in manager.policies if isinstance(p, MaskPolicy)])
    manager.policies += [recorder, ema]
    return recorder, ema


def test_decay_is_yolov5s_ramp():
    cfg = EmaConfig()
    assert ema_decay(1, cfg) == pytest.approx(0.9999 * (1 - math.exp(-1 / 2000)))
    assert ema_decay(2000, cfg) == pytest.approx(0.9999 * (1 - math.exp(-1)))
    assert ema_decay(10**6, cfg) == pytest.approx(0.9999)


def test_average_follows_the_formula_and_becomes_the_model(make_masked_run):
    manager, masks = make_masked_run(SGD, epochs=2)
    recorder, ema = with_ema(manager)
    manager.fit()
    expected = dict(recorder.states[0])
    for update, state in enumerate(recorder.states[1:], start=1):
        d = ema_decay(update, FAST)
        expected = {k: d * v + (1 - d) * state[k] if v.is_floating_point() else v for k, v in expected.items()}
    final = manager.state.model.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(final[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert ema.updates == manager.state.step == 6
    assert not torch.equal(final["conv2.weight"], recorder.states[-1]["conv2.weight"]), "the average, not the last step"
    for name, mask in masks.items():
        assert torch.equal(final[name] == 0, ~mask), name


def test_evaluation_scores_the_average(make_masked_run):
    manager, _ = make_masked_run(SGD, epochs=2)
    scored = []
    original = manager.task.evaluate
    manager.task.evaluate = lambda model, *a, **k: scored.append(model) or original(model, *a, **k)
    _, ema = with_ema(manager)
    manager.fit()
    assert scored and all(model is not manager.state.model for model in scored)
    assert not any(m.training for m in scored[-1].modules())


def test_pruned_weights_are_zero_in_the_average_while_pruning_runs(make_manager):
    manager, _, probe = make_manager(GMP)
    _, ema = with_ema(manager)
    checked = []

    class Check(Policy):
        def on_after_optimizer_step(self, state):
            params = dict(state.model.named_parameters())
            average = ema.ema.state_dict()
            for name in ("conv1.weight", "conv2.weight"):
                assert torch.all(average[name][params[name] == 0] == 0), (state.step, name)
            checked.append(state.step)

    manager.policies.append(Check())
    manager.fit()
    assert len(checked) == manager.state.step == 9
    params = dict(manager.state.model.named_parameters())
    assert probe.zeros[9] == {n: int((params[n] == 0).sum()) for n in ("conv1.weight", "conv2.weight")}


def test_resume_equals_uninterrupted(tmp_path, make_masked_run):
    full, _ = make_masked_run(SGD, epochs=3)
    with_ema(full)
    full_metrics = full.fit()

    first, _ = make_masked_run(SGD, epochs=3)
    with_ema(first)
    first.policies.append(CheckpointSaver(tmp_path / "ck.pt", first.training_state))
    first.state.num_epochs = 1
    first.fit()
    second, _ = make_masked_run(SGD, epochs=3)
    _, ema = with_ema(second)
    second.restore(torch.load(tmp_path / "ck.pt", weights_only=True))
    resumed = second.fit()
    for (key, a), b in zip(full.state.model.state_dict().items(), second.state.model.state_dict().values()):
        assert torch.equal(a, b), key
    assert resumed["test_acc"] == full_metrics["test_acc"] and ema.updates == 9


def test_quantization_aware_training_switches_it_off(make_manager, caplog):
    recipe = ("modifiers:\n  - !EpochRangeModifier\n    end_epoch: 2\n"
              "  - !QuantizationModifier\n    start_epoch: 1\n")
    manager, _, _ = make_manager(recipe)
    recorder, ema = with_ema(manager)
    with caplog.at_level("INFO", logger="policies.ema"):
        manager.fit()
    assert not ema.enabled and manager.state.eval_model is None
    assert ema.updates == 3, "averaged the dense epoch only"
    assert "quantization-aware" in caplog.text
    final = manager.state.model.state_dict()
    assert all(torch.equal(final[k], v) for k, v in recorder.states[-1].items()), "the model is kept as trained"


def test_trainer_config_section():
    base = {"optimizer": {"lr": 0.1}}
    assert TrainerConfig(**base).ema is None
    assert TrainerConfig(**base, ema={}).ema == EmaConfig()
    assert TrainerConfig(**base, ema={"decay": 0.999, "tau_steps": 100}).ema.decay == 0.999
    with pytest.raises(ValueError, match="tau"):
        TrainerConfig(**base, ema={"tau": 100})
    with pytest.raises(ValueError, match="decay"):
        TrainerConfig(**base, ema={"decay": 1.0})
