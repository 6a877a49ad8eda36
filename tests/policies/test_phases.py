"""Policies order themselves by phase (issue 28): schedule < mask < average < observe < save, whatever order they are
listed in -- masks before the weights' average, observers after both, the checkpoint last -- and a recipe's modifiers
keep their own order within their phase."""
import torch

from policies.base import Phase, TrainState
from policies.ema import EmaConfig, EmaPolicy
from policies.loggers import CheckpointSaver, MetricsLogger, ProgressBar
from policies.manager import Manager
from policies.masking import FixedMaskPolicy
from policies.trainer import LRSchedulePolicy, ScheduleConfig


def state(model):
    return TrainState(model=model, forward_model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      device=torch.device("cpu"), steps_per_epoch=1, num_epochs=1, seed=0)


def test_the_manager_sorts_policies_by_phase(tmp_path):
    model = torch.nn.Linear(4, 2)
    masks = {"weight": torch.ones(2, 4, dtype=torch.bool)}
    mask_a, mask_b = FixedMaskPolicy(masks), FixedMaskPolicy(masks)
    ema = EmaPolicy(EmaConfig(decay=0.9, tau_steps=10), mask_policies=[mask_a])
    schedule = LRSchedulePolicy(base_lr=0.1, cfg=ScheduleConfig(name="constant"))
    metrics, bar = MetricsLogger(tmp_path / "m.jsonl"), ProgressBar(enabled=False)
    listed = [metrics, ema, mask_a, bar, schedule, mask_b]
    manager = Manager(state=state(model), policies=listed, train_loader=[], test_loader=[])
    assert manager.policies == [schedule, mask_a, mask_b, ema, metrics, bar]
    saver = CheckpointSaver(tmp_path / "c.pt", dict)
    manager.add(saver)
    manager.add(FixedMaskPolicy(masks))                  # added late, still before the average and the observers
    assert [p.phase for p in manager.policies] == sorted(p.phase for p in manager.policies)
    assert manager.policies[-1] is saver and manager.policies[3].phase == Phase.MASK


def test_a_full_runs_policies_are_in_phase_order(tmp_path, monkeypatch):
    """What main.py builds (trainer config with EMA, observers, the checkpoint saver) comes out in phase order."""
    from tests.runs.test_bad_inputs import TRAINER, train

    trainer = tmp_path / "ema.yaml"
    trainer.write_text(TRAINER + "ema: {decay: 0.99, tau_steps: 10}\n")
    seen = []
    real = Manager.fit

    def fit(self):
        seen.extend(self.policies)
        return real(self)

    monkeypatch.setattr(Manager, "fit", fit)
    train(tmp_path, "--dset", "synthetic", "--arch", "resnet_small", "--max_train_samples", "16", trainer=trainer)
    phases = [p.phase for p in seen]
    assert phases == sorted(phases) and phases[0] == Phase.SCHEDULE and phases[-1] == Phase.SAVE
    assert Phase.AVERAGE in phases and Phase.OBSERVE in phases
