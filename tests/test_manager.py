"""The loop's invariants on a tiny model: masks exact under any optimizer, resume equals no stop."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from policies.base import TrainState
from policies.loggers import CheckpointSaver
from policies.manager import Manager
from policies.masking import FixedMaskPolicy
from policies.trainer import LRSchedulePolicy, OptimizerConfig, ScheduleConfig, build_optimizer
from utils.errors import UserError
from utils.masks import magnitude_mask


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def make_run(optimizer_cfg, *, epochs=3, seed=0, lr=0.05):
    torch.manual_seed(123)
    model = Tiny()
    masks = {"conv.weight": magnitude_mask(model.conv.weight, 0.7), "fc.weight": magnitude_mask(model.fc.weight, 0.5)}
    x, y = torch.randn(40, 3, 6, 6), torch.randint(0, 4, (40,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator())
    test = DataLoader(TensorDataset(x[:8], y[:8]), batch_size=8)
    opt = build_optimizer(model, optimizer_cfg)
    state = TrainState(model=model, forward_model=model, optimizer=opt, device=torch.device("cpu"),
                       steps_per_epoch=len(loader), num_epochs=epochs, seed=seed)
    policies = [LRSchedulePolicy(base_lr=lr, cfg=ScheduleConfig(name="step", milestones_epochs=[2])),
                FixedMaskPolicy(masks)]
    return Manager(state=state, policies=policies, train_loader=loader, test_loader=test), masks


OPTIMIZERS = {
    "sgd_momentum_wd": OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
    "adamw": OptimizerConfig(name="adamw", lr=0.05, weight_decay=0.05),
    "adam_wd": OptimizerConfig(name="adam", lr=0.05, weight_decay=1e-3),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_zeros_equal_mask_bit_for_bit_after_training(name):
    manager, masks = make_run(OPTIMIZERS[name])
    before = {n: p.detach().clone() for n, p in manager.state.model.named_parameters()}
    manager.fit()
    params = dict(manager.state.model.named_parameters())
    for pname, mask in masks.items():
        assert torch.equal(params[pname] == 0, ~mask), pname
        assert not torch.equal(params[pname], before[pname]), "kept weights must train"
    # momentum / Adam state of pruned entries stays zero too: nothing leaks into them
    for pname, mask in masks.items():
        for value in manager.state.optimizer.state[params[pname]].values():
            if torch.is_tensor(value) and value.shape == mask.shape:
                assert torch.all(value[~mask] == 0), pname


def test_resume_equals_uninterrupted(tmp_path):
    cfg = OPTIMIZERS["sgd_momentum_wd"]
    full, _ = make_run(cfg, epochs=3)
    full_metrics = full.fit()

    first, _ = make_run(cfg, epochs=3)
    saved = {}
    first.policies.append(CheckpointSaver(tmp_path / "ck.pt", lambda: saved.setdefault("ck", first.training_state())))
    first.state.num_epochs = 1  # "killed" after one epoch
    first.fit()
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)

    second, _ = make_run(cfg, epochs=3)
    second.restore(ck)
    resumed_metrics = second.fit()
    for (n, a), b in zip(full.state.model.state_dict().items(), second.state.model.state_dict().values()):
        assert torch.equal(a, b), n
    assert resumed_metrics["test_acc"] == full_metrics["test_acc"]
    assert second.state.step == full.state.step


def test_nonfinite_loss_names_step_and_lr():
    manager, _ = make_run(OPTIMIZERS["sgd_momentum_wd"], lr=1e30)
    with torch.no_grad():
        manager.state.model.fc.weight.fill_(float("inf"))
    with pytest.raises(UserError, match=r"at step 0 .*lr 1e\+30"):
        manager.fit()
