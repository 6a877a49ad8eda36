"""OBS and M-FAC pruning: the block inverse Fisher is exact, and on a trained model they remove weights at a
lower loss increase than magnitude pruning at the same sparsity."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from policies.base import TrainState
from policies.modifiers import build_modifiers
from policies.modifiers.second_order import BlockFisherInverse
from policies.recipe.load import load_recipe_text


def test_block_fisher_inverse_is_the_exact_inverse_of_each_block():
    torch.manual_seed(0)
    d, block, m, damp = 10, 4, 6, 1e-2
    grads = torch.randn(m, d)
    finv = BlockFisherInverse(num_grads=m, block=block, size=d, damp=damp, device=torch.device("cpu"))
    for g in grads:
        finv.add_grad(g)
    padded = torch.cat([grads, torch.zeros(m, 12 - d)], 1)
    for b in range(3):
        g = padded[:, 4 * b:4 * b + 4]
        exact = torch.linalg.inv(damp * torch.eye(4) + g.T @ g / m)
        assert torch.allclose(finv.f_inv[b], exact, rtol=1e-3, atol=1e-3), b
    v = torch.randn(d)
    dense = torch.block_diag(*[finv.f_inv[b] for b in range(3)])[:d, :d]
    assert torch.allclose(finv.mul(v), dense @ v, atol=1e-4)
    assert torch.allclose(finv.diag(), torch.diagonal(dense))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def trained():
    """A small MLP part-way trained on a noisy task (at convergence the empirical Fisher carries no signal)."""
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = (x @ torch.randn(16, 4)).argmax(1)
    flip = torch.rand(512) < 0.2
    y[flip] = torch.randint(0, 4, (int(flip.sum()),))
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator())


RECIPE = """
modifiers:
  - !{name}
    init_sparsity: 0.7
    final_sparsity: 0.7
    start_epoch: 0
    end_epoch: 0
    update_frequency: 1
    global_sparsity: false
    params: ['fc1.weight', 'fc2.weight']
{extra}"""

SECOND_ORDER = ("    num_grads: 256\n    damp: 0.0001\n    fisher_block_size: 32\n"
                "    grad_sampler_kwargs: {batch_size: 4}\n")


def pruned_loss(model, loader, name, extra):
    model = copy.deepcopy(model)
    modifier = build_modifiers(load_recipe_text(RECIPE.format(name=name, extra=extra)), model=model,
                               steps_per_epoch=len(loader))[0]
    state = TrainState(model=model, forward_model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                       device=torch.device("cpu"), steps_per_epoch=len(loader), num_epochs=1, seed=0,
                       train_loader=loader)
    modifier.on_fit_start(state)            # start == end == 0: one update, at step 0
    x, y = loader.dataset.tensors
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(model(x), y))
    sparsity = {n: float((p == 0).float().mean()) for n, p in model.named_parameters() if n.endswith("weight")}
    return loss, sparsity


@pytest.mark.parametrize("name", ["OBSPruningModifier", "MFACPruningModifier"])
def test_second_order_pruning_loses_less_than_magnitude_at_the_same_sparsity(trained, name):
    model, loader = trained
    x, y = loader.dataset.tensors
    with torch.no_grad():
        base = float(nn.functional.cross_entropy(model(x), y))
    magnitude, mag_sparsity = pruned_loss(model, loader, "GMPruningModifier", "")
    second, sparsity = pruned_loss(model, loader, name, SECOND_ORDER)
    assert sparsity == pytest.approx(mag_sparsity, abs=1e-6) and sparsity["fc1.weight"] == pytest.approx(0.7, abs=2e-3)
    # Measured: loss 0.272 trained; +0.961 after magnitude pruning, +0.799 after OBS / M-FAC (70% per layer).
    assert second - base < 0.9 * (magnitude - base), (base, magnitude, second)
