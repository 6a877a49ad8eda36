"""DistillationModifier: SparseML's loss mix and KL term, self-distillation, a teacher given to a run."""
import copy

import pytest
import torch

from policies.base import Policy, TrainState
from policies.modifiers.distillation import DistillationModifier, kl_logsoftmax
from utils.errors import UserError

SELF = """
modifiers:
  - !EpochRangeModifier
    end_epoch: 2
  - !DistillationModifier
    start_epoch: 1
    end_epoch: 2
    hardness: {hardness}
    temperature: 3.0
    teacher: self
"""


class LossProbe(Policy):
    name = "loss_probe"

    def __init__(self):
        self.seen = {}

    def on_after_forward(self, state: TrainState) -> None:
        b = state.batch
        ce = torch.nn.functional.cross_entropy(b.logits, b.targets)
        self.seen[state.step] = (float(b.loss.detach()), float(ce.detach()), b.inputs, b.logits.detach())


def test_kl_term_is_sparsemls_formula():
    torch.manual_seed(0)
    s, t, temp = torch.randn(5, 7), torch.randn(5, 7), 2.5
    p_t = torch.softmax(t / temp, -1)
    expected = (p_t * (torch.log(p_t) - torch.log_softmax(s / temp, -1))).sum() * temp ** 2 / 5
    assert float(kl_logsoftmax(s, t, temp)) == pytest.approx(float(expected), rel=1e-5)
    assert float(kl_logsoftmax(t, t, temp)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("hardness", [0.5, 1.0])
def test_self_distillation_mixes_the_losses_from_its_start_step(hardness, make_manager):
    manager, policies, _ = make_manager(SELF.format(hardness=hardness))
    probe = LossProbe()
    manager.policies.append(probe)
    distill = next(p for p in policies if isinstance(p, DistillationModifier))
    manager.fit()
    spe = manager.state.steps_per_epoch
    for step, (loss, ce, inputs, logits) in probe.seen.items():
        if step < spe:
            assert loss == pytest.approx(ce), "before start_epoch the loss is the task loss"
            continue
        with torch.no_grad():
            teacher_logits = distill.teacher(inputs)
        kd = float(kl_logsoftmax(logits, teacher_logits, 3.0))
        assert loss == pytest.approx((1 - hardness) * ce + hardness * kd, rel=1e-5), step


def test_a_missing_teacher_is_a_clear_error(make_manager):
    manager, _, _ = make_manager(SELF.format(hardness=0.5).replace("    teacher: self\n", ""))
    with pytest.raises(UserError, match="no teacher: pass --distill_teacher"):
        manager.fit()


def test_a_given_teacher_is_used(make_manager, tiny_model):
    manager, policies, _ = make_manager(SELF.format(hardness=1.0).replace("    teacher: self\n", ""))
    distill = next(p for p in policies if isinstance(p, DistillationModifier))
    torch.manual_seed(5)
    distill.teacher = tiny_model()
    teacher_before = copy.deepcopy(distill.teacher.state_dict())
    manager.fit()
    for key, value in distill.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), f"the teacher never trains: {key}"
