"""The loop's invariants on a tiny model: masks exact under any optimizer, resume equals no stop."""
import pytest
import torch

from policies.loggers import CheckpointSaver
from policies.trainer import OptimizerConfig
from utils.errors import UserError


OPTIMIZERS = {
    "sgd_momentum_wd": OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
    "adamw": OptimizerConfig(name="adamw", lr=0.05, weight_decay=0.05),
    "adam_wd": OptimizerConfig(name="adam", lr=0.05, weight_decay=1e-3),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_zeros_equal_mask_bit_for_bit_after_training(name, make_masked_run):
    manager, masks = make_masked_run(OPTIMIZERS[name])
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


def test_resume_equals_uninterrupted(tmp_path, make_masked_run):
    cfg = OPTIMIZERS["sgd_momentum_wd"]
    full, _ = make_masked_run(cfg, epochs=3)
    full_metrics = full.fit()

    first, _ = make_masked_run(cfg, epochs=3)
    saved = {}
    first.policies.append(CheckpointSaver(tmp_path / "ck.pt", lambda: saved.setdefault("ck", first.training_state())))
    first.state.num_epochs = 1  # "killed" after one epoch
    first.fit()
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)

    second, _ = make_masked_run(cfg, epochs=3)
    second.restore(ck)
    resumed_metrics = second.fit()
    for (n, a), b in zip(full.state.model.state_dict().items(), second.state.model.state_dict().values()):
        assert torch.equal(a, b), n
    assert resumed_metrics["test_acc"] == full_metrics["test_acc"]
    assert second.state.step == full.state.step


def test_nonfinite_loss_names_step_and_lr(make_masked_run):
    manager, _ = make_masked_run(OPTIMIZERS["sgd_momentum_wd"], lr=1e30)
    with torch.no_grad():
        manager.state.model.fc.weight.fill_(float("inf"))
    with pytest.raises(UserError, match=r"at step 0 .*lr 1e\+30"):
        manager.fit()
