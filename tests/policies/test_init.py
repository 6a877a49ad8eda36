"""Policies wire themselves at Event.INIT from the run's context, and say what the run was (Policy.facts): the run
no longer reaches into the policy list by type."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from policies.base import Policy, RunContext, TrainState
from policies.ema import EmaConfig, EmaPolicy
from policies.events import Event
from policies.manager import Manager
from policies.masking import FixedMaskPolicy
from policies.modifiers import build_recipe_policies
from policies.recipe.load import load_recipe_text
from utils.errors import UserError


def state_of(model: torch.nn.Module) -> TrainState:
    return TrainState(model=model, forward_model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                      device=torch.device("cpu"), steps_per_epoch=3, num_epochs=2, seed=0)


class Says(Policy):
    def __init__(self, name: str, facts: dict):
        self.name, self._facts, self.seen = name, facts, None

    def on_init(self, state: TrainState) -> None:
        self.seen = [p.name for p in state.context.policies]

    def facts(self) -> dict:
        return self._facts


def test_init_gives_every_policy_the_others_and_facts_merge_in_order():
    model = torch.nn.Linear(4, 3)
    first, second = Says("a", {"method": "GMP", "x": 1}), Says("b", {"method": "AC/DC"})
    manager = Manager(state=state_of(model), policies=[first, second], train_loader=[], test_loader=[])
    manager.wire(RunContext(num_classes=3))
    assert first.seen == second.seen == ["a", "b"] and manager.state.context.num_classes == 3
    assert manager.facts() == {"method": "AC/DC", "x": 1}


def test_the_weights_average_finds_the_masks_it_must_hold_at_init():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    mask = (torch.rand(3, 4) > 0.5).float()
    with torch.no_grad():
        model.weight.mul_(mask)
    ema = EmaPolicy(EmaConfig(decay=0.5, tau_steps=1))         # no masks given: INIT finds them
    data = TensorDataset(torch.randn(12, 4), torch.randint(0, 3, (12,)))
    loader = DataLoader(data, batch_size=4)
    manager = Manager(state=state_of(model), policies=[FixedMaskPolicy({"weight": mask}), ema], train_loader=loader,
                      test_loader=loader)
    manager.wire(RunContext())
    assert [type(p) for p in ema.mask_policies] == [FixedMaskPolicy]
    manager.fit()
    assert not (ema.ema.weight * (1 - mask)).any() and ema.ema.weight.count_nonzero() > 0


def test_a_distillation_teacher_comes_from_the_context_and_must_predict_the_students_classes():
    recipe = load_recipe_text("modifiers:\n  - !EpochRangeModifier\n    end_epoch: 1\n  - !DistillationModifier\n"
                              "    start_epoch: 0\n    hardness: 0.5\n    teacher: t.pth\n", None, source="r")
    model = torch.nn.Linear(4, 3)
    model.get_classifier = lambda: model
    policies, _ = build_recipe_policies(recipe, model=model, steps_per_epoch=3)
    asked = []

    def load_model(path):
        asked.append(path)
        teacher = torch.nn.Linear(4, 5)
        teacher.get_classifier = lambda: teacher
        return teacher

    manager = Manager(state=state_of(model), policies=policies, train_loader=[], test_loader=[])
    with pytest.raises(UserError, match="predicts 5 classes, the student 3"):
        manager.wire(RunContext(load_model=load_model, teacher="flag.pth", num_classes=3))
    assert asked == ["flag.pth"]                  # the flag's checkpoint over the recipe's
    given = torch.nn.Linear(4, 3)
    manager.wire(RunContext(teacher=given))
    distill = [p for p in policies if hasattr(p, "teacher")]
    assert distill[0].teacher is given and Event.INIT.value == "init"
