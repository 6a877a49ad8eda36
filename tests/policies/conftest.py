"""Shared by the policy tests: a tiny two-conv model, its data, and Managers built around recipes or fixed masks."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from policies.base import Policy, TrainState
from policies.manager import Manager
from policies.masking import FixedMaskPolicy
from policies.modifiers import build_recipe_policies
from policies.recipe.load import load_recipe_text
from policies.trainer import LRSchedulePolicy, OptimizerConfig, ScheduleConfig, build_optimizer
from utils.sparsity import magnitude_mask

PRUNED = ("conv1.weight", "conv2.weight")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).mean((2, 3)))


class Probe(Policy):
    """Records, after every optimizer step (after the modifiers), the zeros of the pruned layers."""

    name = "probe"

    def __init__(self):
        self.zeros, self.momentum_zero = {}, {}

    def on_after_optimizer_step(self, state: TrainState) -> None:
        p = dict(state.model.named_parameters())
        self.zeros[state.step] = {n: int((p[n] == 0).sum()) for n in PRUNED}
        bufs = [s["momentum_buffer"] for s in state.optimizer.state.values() if "momentum_buffer" in s]
        self.momentum_zero[state.step] = bool(bufs) and all(bool((b == 0).all()) for b in bufs)


def tiny_loaders() -> tuple[DataLoader, DataLoader]:
    """40 samples in batches of 16: 3 optimizer steps per epoch, the last one a partial batch."""
    x, y = torch.randn(40, 4, 6, 6), torch.randint(0, 4, (40,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator())
    return loader, DataLoader(TensorDataset(x[:8], y[:8]), batch_size=8)


def tiny_state(model: nn.Module, loader: DataLoader, optimizer_cfg: OptimizerConfig, *, epochs: int,
               seed: int = 0) -> TrainState:
    return TrainState(model=model, forward_model=model, optimizer=build_optimizer(model, optimizer_cfg),
                      device=torch.device("cpu"), steps_per_epoch=len(loader), num_epochs=epochs, seed=seed)


@pytest.fixture
def tiny_model():
    """The class: call it for a fresh tiny model."""
    return Tiny


@pytest.fixture
def make_manager():
    """(recipe text, ...) -> (Manager, the recipe's policies, a Probe recording zeros after every step)."""

    def make(recipe_text, *, optimizer=None, prune_at_start=None, epochs=None):
        torch.manual_seed(123)
        model = Tiny()
        if prune_at_start:
            with torch.no_grad():
                for name, sparsity in prune_at_start.items():
                    w = model.get_parameter(name)
                    w.mul_(magnitude_mask(w, sparsity))
        loader, test = tiny_loaders()
        optimizer = optimizer or OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
        policies, num_epochs = build_recipe_policies(load_recipe_text(recipe_text, source="test-recipe"), model=model,
                                                     steps_per_epoch=len(loader))
        probe = Probe()
        state = tiny_state(model, loader, optimizer, epochs=epochs or num_epochs)
        return Manager(state=state, policies=[*policies, probe], train_loader=loader, test_loader=test), policies, probe

    return make


@pytest.fixture
def make_masked_run():
    """(optimizer config, ...) -> (Manager with a step LR schedule and fixed masks, the masks)."""

    def make(optimizer_cfg, *, epochs=3, seed=0, lr=0.05):
        torch.manual_seed(123)
        model = Tiny()
        masks = {"conv1.weight": magnitude_mask(model.conv1.weight, 0.7),
                 "fc.weight": magnitude_mask(model.fc.weight, 0.5)}
        loader, test = tiny_loaders()
        policies = [LRSchedulePolicy(base_lr=lr, cfg=ScheduleConfig(name="step", milestones_epochs=[2])),
                    FixedMaskPolicy(masks)]
        state = tiny_state(model, loader, optimizer_cfg, epochs=epochs, seed=seed)
        return Manager(state=state, policies=policies, train_loader=loader, test_loader=test), masks

    return make
