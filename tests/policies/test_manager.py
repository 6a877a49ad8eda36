"""The loop's invariants on a tiny model: masks exact under any optimizer, resume equals no stop."""
import itertools

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from policies.base import Policy, TrainState
from policies.loggers import CheckpointSaver
from policies.manager import Manager
from policies.tasks import ClassificationTask
from policies.trainer import OptimizerConfig, TrainerConfig, accumulation, build_optimizer
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


class Linear64(torch.nn.Module):
    """No BatchNorm (its batch statistics would differ between batch sizes), float64: sums in any order agree."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.body = torch.nn.Linear(12, 16).double()
        self.fc = torch.nn.Linear(16, 3).double()

    def forward(self, x):
        return self.fc(torch.tanh(self.body(x)))


class Counter(Policy):
    name = "counter"

    def __init__(self):
        self.backward = self.stepped = 0

    def on_after_backward(self, state):
        self.backward += 1

    def on_after_optimizer_step(self, state):
        self.stepped += 1


class SummedLoss(ClassificationTask):
    """A loss that grows with the batch, as YOLOv5's (its mean times the batch size)."""

    loss_grows_with_batch = True

    def loss(self, outputs, targets):
        return super().loss(outputs, targets) * outputs.shape[0]


def accumulated_run(loader, *, accumulate: int, steps_per_epoch: int, epochs: int = 2, task=None):
    model = Linear64()
    cfg = OptimizerConfig(name="sgd", lr=0.3, momentum=0.9, weight_decay=1e-3)
    state = TrainState(model=model, forward_model=model, optimizer=build_optimizer(model, cfg),
                       device=torch.device("cpu"), steps_per_epoch=steps_per_epoch, num_epochs=epochs, seed=3)
    counter = Counter()
    Manager(state=state, policies=[counter], train_loader=loader, test_loader=loader,
            accumulate_steps=accumulate, task=task).fit()
    return model, state, counter


@pytest.mark.parametrize("task", [ClassificationTask, SummedLoss])
@pytest.mark.parametrize("small, accumulate, big", [(8, 2, [16, 16, 8]), (8, 3, [24, 16]), (10, 4, [40])])
def test_accumulated_batches_step_as_one_batch_of_their_size(small, accumulate, big, task):
    """Batches of `small`, one step per `accumulate` of them (the epoch's last step with what is left), move the
    weights as batches of the sizes in `big` do (the same samples; a mean loss averaged, a growing one summed)."""
    data = TensorDataset(torch.randn(40, 12, dtype=torch.float64), torch.randint(0, 3, (40,)))
    edges = [0, *itertools.accumulate(big)]
    one_batch = DataLoader(data, batch_sampler=[list(range(a, b)) for a, b in zip(edges, edges[1:])])
    want, want_state, _ = accumulated_run(one_batch, accumulate=1, steps_per_epoch=len(big), task=task())
    got, got_state, counter = accumulated_run(DataLoader(data, batch_size=small), accumulate=accumulate,
                                              steps_per_epoch=len(big), task=task())
    for (name, a), b in zip(want.state_dict().items(), got.state_dict().values()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), name
    assert got_state.step == want_state.step == 2 * len(big)
    assert counter.backward == counter.stepped == 2 * len(big)       # once per optimizer step, not per batch


def test_masks_stay_exact_with_accumulation(make_masked_run):
    manager, masks = make_masked_run(OPTIMIZERS["sgd_momentum_wd"])
    manager.accumulate_steps, manager.state.steps_per_epoch = 2, 2    # 3 batches: steps of 2 and 1
    manager.fit()
    params = dict(manager.state.model.named_parameters())
    for pname, mask in masks.items():
        assert torch.equal(params[pname] == 0, ~mask), pname
    assert manager.state.step == 2 * 3


def test_the_accumulation_rules():
    opt = OptimizerConfig(name="sgd", lr=0.01, weight_decay=5e-4)
    yolo = TrainerConfig(optimizer=opt, nominal_batch_size=64)
    assert accumulation(yolo, 16) == (4, 5e-4)                         # YOLOv5 at --batch 16
    assert accumulation(yolo, 24) == (3, pytest.approx(5e-4 * 72 / 64))   # round(2.67) = 3, decay scaled as there
    assert accumulation(yolo, 128) == (1, pytest.approx(1e-3))
    assert accumulation(yolo, 16, steps=2) == (2, 5e-4)                # a command line's count wins
    assert accumulation(TrainerConfig(optimizer=opt, accumulate_steps=5), 8) == (5, 5e-4)
    with pytest.raises(ValueError, match="accumulate_steps or nominal_batch_size, not both"):
        TrainerConfig(optimizer=opt, accumulate_steps=2, nominal_batch_size=64)


def _ddp_rank(rank: int, port: int, out: str) -> None:
    """One of two gloo processes: global batches of 16 (8 per rank, rank r the r-th half), 2 batches of 4 each
    accumulated per step, a loss that grows with the batch."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    data = ddp_data()
    halves = [list(range(start, start + 4)) for b in range(3) for k in range(2)
              for start in [b * 16 + rank * 8 + k * 4]]
    model = Linear64()
    cfg = OptimizerConfig(name="sgd", lr=0.3, momentum=0.9, weight_decay=1e-3)
    state = TrainState(model=model, forward_model=DistributedDataParallel(model),
                       optimizer=build_optimizer(model, cfg), device=torch.device("cpu"), steps_per_epoch=3,
                       num_epochs=2, seed=3)
    loader = DataLoader(data, batch_sampler=halves)
    Manager(state=state, policies=[], train_loader=loader, test_loader=loader, accumulate_steps=2,
            task=SummedLoss()).fit()
    if rank == 0:
        torch.save(model.state_dict(), out)
    dist.destroy_process_group()


def ddp_data():
    g = torch.Generator().manual_seed(11)
    return TensorDataset(torch.randn(48, 12, dtype=torch.float64, generator=g), torch.randint(0, 3, (48,), generator=g))


def test_two_processes_accumulating_step_as_one_process_with_their_whole_batch(tmp_path):
    """DDP (gloo, CPU) with accumulation and a loss that grows with the batch (a detector's): the weights move as
    one process's batches of 16 move them (YOLOv5 multiplies such a loss by the number of processes)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(port, str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    whole = DataLoader(ddp_data(), batch_size=16)
    want, _, _ = accumulated_run(whole, accumulate=1, steps_per_epoch=3, task=SummedLoss())
    got = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for name, value in want.state_dict().items():
        assert torch.allclose(got[name], value, rtol=0, atol=1e-12), name
