"""A recipe in the user's own loop (policies.recipe.manager) repeats `main.py --recipe` bit for bit."""
import json

import pytest
import torch
import torch.nn.functional as F

import main
from policies.qat.modules import qat_state
from policies.recipe.manager import RecipeManager
from utils.errors import UserError
from utils.runs.downstream import load_data
from utils.runs.setup import load_upstream, make_loaders
from utils.seed import seed_everything

TRAINER = """
epochs: 1
batch_size: 16
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0005}
"""

GMP_QAT = """
num_epochs: 3
modifiers:
  - !EpochRangeModifier
    end_epoch: eval(num_epochs)
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
    lr_func: cosine
    init_lr: 0.05
    final_lr: 0.001
  - !GMPruningModifier
    init_sparsity: 0.05
    final_sparsity: 0.6
    start_epoch: 0
    end_epoch: 1.5
    update_frequency: 0.5
    params: __ALL_PRUNABLE__
  - !QuantizationModifier
    start_epoch: 2
    disable_quantization_observer_epoch: 2.5
    freeze_bn_stats_epoch: 2.5
"""

SEED = 3


def user_setup():
    """The model and data main.py builds for `--arch resnet_small --dset synthetic --image_size 16`."""
    seed_everything(SEED)
    upstream = load_upstream(checkpoint_path=None, flavour=None, arch="resnet_small")
    data, _ = load_data(upstream, dataset="synthetic", dataset_path=None, image_size=16, interpolation=None,
                        max_train_samples=None, seed=SEED)
    seed_everything(SEED)
    upstream.model.reset_classifier(data.num_classes)
    loader, _ = make_loaders(data, batch_size=16, test_batch_size=16, workers=0, device=torch.device("cpu"))
    return upstream.model, loader


def user_loop(recipe, model, loader, *, lrs, stop_after_epoch=None, manager_state=None, accumulate=1):
    """The hand-written loop of a SparseML user (lines marked # loop; with `accumulate`, one optimizer step per
    that many batches, the epoch's last step with what is left); returns the manager."""
    steps = -(-len(loader) // accumulate)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.0005)    # loop
    manager = RecipeManager.from_yaml(recipe, recipe_args={"num_epochs": 3})                       # loop
    if manager_state is not None:
        manager.load_state_dict(manager_state["manager"])
        optimizer.load_state_dict(manager_state["optimizer"])
    first = 0 if manager_state is None else manager_state["manager"]["step"] // steps
    optimizer = manager.modify(model, optimizer, steps_per_epoch=steps, seed=SEED, loader=loader,   # loop
                               start_epoch=first)
    for epoch in range(first, manager.max_epochs):                                                  # loop
        model.train()                                                                               # loop
        for i, (inputs, targets) in enumerate(loader):                                              # loop
            begins = i - i % accumulate
            group = min(accumulate, len(loader) - begins)
            if i == begins:
                optimizer.zero_grad()                                                               # loop
            loss = F.cross_entropy(model(inputs), targets)                                          # loop
            (loss / group).backward()                                                               # loop
            if i == begins + group - 1:
                lrs.append(optimizer.param_groups[0]["lr"])
                optimizer.step()                                                                    # loop
        if epoch == stop_after_epoch:
            return manager, optimizer
    manager.finalize(model)                                                                         # loop
    return manager, optimizer


def main_run(tmp_path, trainer_config, accumulate=1):
    recipe = tmp_path / "gmp_qat.yaml"
    recipe.write_text(GMP_QAT)
    main.main(["--dset", "synthetic", "--config_path", str(trainer_config(TRAINER)), "--arch", "resnet_small",
               "--experiment_root_path", str(tmp_path / "exp"), "--workers", "0", "--no_progress",
               "--image_size", "16", "--manual_seed", str(SEED), "--recipe", str(recipe),
               "--recipe_args", '{"num_epochs": 3}', "--exp_name", "r", "--accumulate_steps", str(accumulate)])
    run_dir = tmp_path / "exp" / "r"
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return recipe, saved, epochs


def assert_same_as_main(model, lrs, steps_per_epoch, saved, epochs):
    state = model.state_dict()
    assert set(state) == set(saved["state_dict"])
    different = [k for k, v in state.items() if not torch.equal(v, saved["state_dict"][k])]
    assert not different, f"tensors differ from main.py's: {different[:5]}"
    for name, mask in saved["masks"].items():
        assert torch.equal(state[name] != 0, mask), name
    assert len(saved["masks"]) > 3 and sum(m.sum() for m in saved["masks"].values()) > 0
    # main.py logs the LR of each epoch's last step
    assert [lrs[(e + 1) * steps_per_epoch - 1] for e in range(len(epochs))] == [e["lr"] for e in epochs]
    ours, theirs = qat_state(model), saved["extra"]["quantization"]
    assert ours["modules"].keys() == theirs["modules"].keys() and ours["modules"]
    for name, module in ours["modules"].items():
        for q, values in module["quantizers"].items():
            for k, v in values.items():
                other = theirs["modules"][name]["quantizers"][q][k]
                assert (torch.equal(v, other) if torch.is_tensor(v) else v == other), (name, q, k)


@pytest.mark.parametrize("accumulate", [1, 3])   # 3: steps of 3 and 1 of the 4 batches
def test_a_hand_written_loop_with_a_gmp_and_qat_recipe_equals_main_py(tmp_path, trainer_config, one_torch_thread,
                                                                      accumulate):
    recipe, saved, epochs = main_run(tmp_path, trainer_config, accumulate)
    model, loader = user_setup()
    lrs = []
    manager, _ = user_loop(recipe, model, loader, lrs=lrs, accumulate=accumulate)
    steps = -(-len(loader) // accumulate)
    assert manager.max_epochs == 3 and len(lrs) == 3 * steps and steps >= 2
    assert len(set(lrs)) > 3 * steps - 2     # a cosine: a new LR (almost) every step
    assert_same_as_main(model, lrs, steps, saved, epochs)
    sparsity = float(sum((p == 0).sum() for n, p in model.named_parameters() if p.ndim > 1)
                     / sum(p.numel() for n, p in model.named_parameters() if p.ndim > 1))
    assert sparsity == pytest.approx(0.6, abs=0.02)


def test_a_loop_stopped_and_resumed_from_the_managers_state_equals_main_py(tmp_path, trainer_config,
                                                                          one_torch_thread):
    recipe, saved, epochs = main_run(tmp_path, trainer_config)
    model, loader = user_setup()
    lrs = []
    manager, optimizer = user_loop(recipe, model, loader, lrs=lrs, stop_after_epoch=0)
    checkpoint = {"model": {k: v.clone() for k, v in model.state_dict().items()},
                  "manager": manager.state_dict(), "optimizer": optimizer.state_dict()}
    model, loader = user_setup()
    model.load_state_dict(checkpoint["model"])
    user_loop(recipe, model, loader, lrs=lrs, manager_state=checkpoint)
    assert_same_as_main(model, lrs, len(loader), saved, epochs)


def test_misuse_gets_one_clear_line(tmp_path):
    recipe = tmp_path / "gmp_qat.yaml"
    recipe.write_text(GMP_QAT)
    manager = RecipeManager.from_yaml(str(recipe), recipe_variables={"num_epochs": 2})
    assert manager.max_epochs == 2
    with pytest.raises(UserError, match="modify"):
        manager.finalize()
    with pytest.raises(UserError, match="zoo"):
        RecipeManager.from_yaml("zoo:cv/classification/resnet_v1-50/pytorch/sparseml/imagenet/pruned-moderate")
    with pytest.raises(UserError, match="recipe variable"):
        RecipeManager.from_yaml(str(recipe), recipe_args={"num_epoch": 2})
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(UserError, match="steps_per_epoch"):
        manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=0)
    assert RecipeManager.from_yaml(GMP_QAT).max_epochs == 3          # recipe text works too


DISTILL = """
modifiers:
  - !EpochRangeModifier
    end_epoch: 1
  - !DistillationModifier
    start_epoch: 0
    end_epoch: 1
    hardness: 0.5
"""


def test_a_distilling_recipe_needs_loss_update_and_adds_its_term():
    torch.manual_seed(0)
    model, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    manager = RecipeManager.from_yaml(DISTILL)
    optimizer = manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=2, teacher=teacher)
    outputs = model(x)
    plain = F.cross_entropy(outputs, y)
    with pytest.raises(UserError, match="loss_update"):
        plain.backward()
        optimizer.step()
    optimizer.zero_grad()
    outputs = model(x)
    loss = manager.loss_update(F.cross_entropy(outputs, y), inputs=x, outputs=outputs, targets=y)
    assert float(loss.detach()) != pytest.approx(float(F.cross_entropy(outputs, y).detach()))     # the KL term is in
    loss.backward()
    optimizer.step()


GMP_ONLY = """
modifiers:
  - !EpochRangeModifier
    end_epoch: 2
  - !GMPruningModifier
    init_sparsity: 0.2
    final_sparsity: 0.6
    start_epoch: 0
    end_epoch: 1
    update_frequency: 0.5
    params: ['0.weight']
"""


def test_an_averaged_copy_of_the_weights_is_kept_as_sparse_as_the_model():
    """torch's AveragedModel (an EMA) of a model pruned by the recipe: apply_masks after each update zeroes what
    the recipe prunes, and nothing else."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    manager = RecipeManager.from_yaml(GMP_ONLY)
    optimizer = manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), steps_per_epoch=4)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    for _ in range(manager.max_epochs * 4):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        ema.update_parameters(model)
        manager.apply_masks(ema.module)
        pruned = model[0].weight == 0
        assert torch.all(ema.module[0].weight[pruned] == 0) and bool(pruned.any())
        assert bool((ema.module[2].weight != 0).all()), "an unmasked layer is left alone"
    assert float((ema.module[0].weight == 0).float().mean()) == pytest.approx(0.6, abs=0.02)
    with pytest.raises(UserError, match="ema.module"):
        manager.apply_masks(ema)                 # the wrapper's names carry 'module.'
    manager.finalize()


def test_a_recipe_without_pruning_keeps_a_sparse_models_zeros_in_the_users_loop(make_sparse_checkpoint, tmp_path):
    masks = make_sparse_checkpoint(tmp_path / "up.pt")
    upstream = load_upstream(checkpoint_path=str(tmp_path / "up.pt"), flavour=None, arch=None)
    model = upstream.model
    model.reset_classifier(4)
    manager = RecipeManager.from_yaml("num_epochs: 1\nmodifiers:\n  - !EpochRangeModifier\n    end_epoch: 1\n"
                                      "  - !SetLearningRateModifier\n    start_epoch: 0\n    learning_rate: 0.1\n")
    optimizer = manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), steps_per_epoch=3)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()
    manager.finalize(model)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.equal(params[name] == 0, ~mask), name


def test_both_managers_drive_a_policy_through_the_same_events():
    """The same events, in the same order and at the same (epoch, step), reach a policy in main.py's Manager and in
    a user's loop with the RecipeManager: both emit through policies.driver.Driver."""
    from torch.utils.data import DataLoader, TensorDataset

    from policies.base import Policy, TrainState
    from policies.driver import Driver
    from policies.events import Event
    from policies.manager import Manager

    class Recorder(Policy):
        name = "recorder"

        def __init__(self):
            self.seen = []

        def on_event(self, event, state):
            if event in (Event.BATCH_START, Event.AFTER_BACKWARD, Event.AFTER_OPTIMIZER_STEP, Event.EPOCH_END):
                self.seen.append((event.name, state.epoch, state.step))

    data = TensorDataset(torch.randn(12, 4), torch.randint(0, 3, (12,)))
    loader = DataLoader(data, batch_size=4)

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ours = Recorder()
    state = TrainState(model=model, forward_model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                       device=torch.device("cpu"), steps_per_epoch=3, num_epochs=2, seed=0)
    Manager(state=state, policies=[ours], train_loader=loader, test_loader=loader).fit()

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    theirs = Recorder()
    manager = RecipeManager.from_yaml("num_epochs: 2\nmodifiers:\n  - !EpochRangeModifier\n    end_epoch: 2\n")
    optimizer = manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=3)
    assert isinstance(manager.driver, Driver) and isinstance(Manager, type) and issubclass(Manager, Driver)
    manager.driver.add(theirs)
    for _ in range(2):
        for inputs, targets in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
    manager.finalize(model)
    assert theirs.seen == ours.seen and len(ours.seen) == 2 * (3 * 3 + 1)
