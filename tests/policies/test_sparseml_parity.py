"""Recipes behave as SparseML runs them: each row of the divergence table, checked step by step.

`Ref*` below is a transcription of SparseML's own scheduling code (sparseml.pytorch: the wrapped optimizer's
epoch, ScheduledModifier / ScheduledUpdateModifier start/end/update_ready, the manager's modifier order,
the LR modifiers, GMP's `interpolate`, AC/DC's `get_applied_sparsity_for_epoch`), written independently of
the project's code; LearningRateModifier's reference drives torch's real LR schedulers on a real optimizer.
The project's values come from its own modifiers and `RecipeSchedule`.
"""
import math
import random
import sys
import warnings
from functools import cmp_to_key

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, MultiStepLR, StepLR

from policies.base import TrainState
from policies.modifiers import build_modifiers, build_recipe_policies, recipe_num_epochs
from policies.modifiers.acdc import ACDCPruningModifier
from policies.modifiers.training import RecipeSchedule
from policies.recipe.load import load_recipe_text
from utils.errors import UserError

EPS = sys.float_info.epsilon


# ---------------------------------------------------------------- the reference: SparseML's rules


def ref_epoch(steps: int, spe: int) -> float:
    return float(steps // spe) + float(steps % spe) / float(spe)


class RefModifier:
    """ScheduledModifier (freq None) / ScheduledUpdateModifier (freq set) bookkeeping, as SparseML's."""

    def __init__(self, start, end, freq=None):
        self.start, self.end, self.freq = float(start), float(end), freq
        self.started = self.ended = False
        self.last_update = -1.0

    def start_pending(self, e):
        return not self.started and not self.ended and (e >= self.start >= 0.0 or self.start == -1.0)

    def end_pending(self, e):
        return not self.ended and self.started and e >= self.end >= 0.0

    def update_ready(self, e):
        pending = self.start_pending(e) or self.end_pending(e)
        if self.freq is None:
            return pending
        ready = (self.started and e > self.start and not self.ended
                 and (self.freq == -1.0 or (self.last_update >= 0.0 and e >= self.last_update + self.freq)))
        return pending or ready

    def scheduled_update(self, opt, e, spe):
        if self.freq is not None:
            self.last_update = e
        self.update(opt, e, spe)
        if self.start_pending(e):
            self.started = True
        if self.end_pending(e):
            self.ended = True

    def update(self, opt, e, spe):
        pass


def ref_compare(one, two):
    """BaseModifier.comparator: end epoch (-1 never ends: last), then start; ties keep recipe order here."""
    if one.end != two.end:
        if two.end == -1:
            return -1
        if one.end == -1:
            return 1
        return -1 if one.end < two.end else 1
    if one.start != two.start:
        return 1 if one.start > two.start else -1
    return 0


class RefSetLR(RefModifier):
    def __init__(self, start, lr, groups=None):
        super().__init__(start, -1)                     # SparseML forces end_epoch = -1
        self.lr, self.groups, self.lr_set = lr, groups, False

    def update(self, opt, e, spe):
        if (self.start < 0.0 or (self.start - e) < EPS) and not self.lr_set:
            for i, g in enumerate(opt.param_groups):
                if not self.groups or i in self.groups:
                    g["lr"] = self.lr
            self.lr_set = True


class RefLRFunction(RefModifier):
    def __init__(self, start, end, func, init, final, groups=None, cycle=1.0):
        super().__init__(start, end, freq=-1.0)
        self.func, self.init, self.final, self.groups, self.cycle = func, init, final, groups, cycle

    def value(self, e, spe):
        start = self.start if self.start > 0 else 0.0
        if self.func == "linear":
            return self.init + ((e - start) / (self.end - start)) * (self.final - self.init)
        if self.func == "cosine":
            x = (e - start) / (self.end - start)
            if self.final < self.init:
                rng, shift, xs = self.init - self.final, self.final, 0
            else:
                rng, shift, xs = self.final - self.init, self.init, math.pi
            return math.cos(x * math.pi + xs) * rng / 2 + rng / 2 + shift
        end_step, start_step, cycle = self.end * spe, self.start * spe, self.cycle * spe
        current = (e - self.start) * spe
        if current > int((end_step - start_step) / cycle) * cycle:
            cycle = (end_step - start_step) % cycle
        return self.init - ((current % cycle) / (cycle - 1)) * (self.init - self.final)

    def update(self, opt, e, spe):
        lr = self.value(e, spe)
        for i, g in enumerate(opt.param_groups):
            if not self.groups or i in self.groups:
                g["lr"] = lr


class RefLRScheduler(RefModifier):
    """LearningRateModifier: torch's schedulers, stepped as SparseML steps them."""

    def __init__(self, lr_class, kwargs, init_lr, start, end=-1):
        super().__init__(start, end, freq=-1.0)
        self.lr_class, self.kwargs, self.init_lr = lr_class, dict(kwargs), init_lr
        self.scheduler, self.scheduler_steps = None, 0

    def corrected(self, spe):
        cls, kw = self.lr_class, dict(self.kwargs)
        if cls == "ExponentialLR":
            kw["step_size"], cls = 1.0, "StepLR"
        if cls == "StepLR":
            kw["step_size"] = round(kw["step_size"] * spe)
        elif cls == "MultiStepLR":
            kw["milestones"] = [round((m - self.start) * spe) for m in kw["milestones"]]
        else:
            kw["eta_min"], kw["T_0"] = kw.pop("lr_min"), kw.pop("cycle_epochs")
        return cls, kw

    def update(self, opt, e, spe):
        if self.scheduler is None and self.init_lr:
            for g in opt.param_groups:
                g["lr"] = self.init_lr
        if e <= EPS:
            self.scheduler_steps -= 1
            return
        if abs(self.end - e) <= EPS and self.end >= 0.0:
            return
        if self.scheduler is None:
            cls, kw = self.corrected(spe)
            self.cls = cls
            self.scheduler = {"StepLR": StepLR, "MultiStepLR": MultiStepLR,
                              "CosineAnnealingWarmRestarts": CosineAnnealingWarmRestarts}[cls](optimizer=opt, **kw)
            self.scheduler_steps += round(e * spe)
        if self.cls != "CosineAnnealingWarmRestarts":
            global_step = round(e * spe) if self.end < 0.0 or e <= self.end else round(self.end * spe)
            diff = global_step - self.scheduler_steps
            if diff > 0:
                for _ in range(diff):
                    self.scheduler.step()
                self.scheduler_steps = global_step
        else:
            self.scheduler.step(e - self.start if self.start >= 0.0 else 0.0)


def ref_interpolate(x, x0, x1, y0, y1, func):
    t = (x - x0) / (x1 - x0)
    y = t if func == "linear" else 1 - (1 - t) ** 3 if func == "cubic" else 1 - (1 - t) ** (1 / 3)
    if y <= 0.0 + EPS:
        return y0
    if y >= 1.0 - EPS:
        return y1
    return y * (y1 - y0) + y0


class RefGMP(RefModifier):
    def __init__(self, start, end, freq, init, final, func="cubic", leave_enabled=True):
        super().__init__(start, end, freq=freq)
        self.init, self.final, self.func, self.leave_enabled = init, final, func, leave_enabled
        self.applied, self.enabled = None, False

    def update(self, opt, e, spe):
        started = self.started
        if self.start_pending(e):
            self.enabled, started = True, True
        if started:
            self.applied = ref_interpolate(e, self.start, self.end, self.init, self.final, self.func)
        if self.end_pending(e) and not self.leave_enabled:
            self.enabled = False


class RefACDC(RefModifier):
    def __init__(self, start, end, freq, sparsity):
        super().__init__(int(start), int(end), freq=int(freq))
        self.sparsity, self.applied = sparsity, None

    def update(self, opt, e, spe):
        if self.start_pending(e) or self.started:
            phase = math.floor((e - self.start) / self.freq)
            dense = phase % 2 == 0 and self.end - self.freq > e
            self.applied = 0.0 if dense else self.sparsity


def ref_run(modifiers, *, spe, total_steps, groups=1, lr=0.3, weight_decay=0.0):
    """Per step: the LR of every param group and each modifier's `applied` value in force at that step."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(groups)]
    opt = torch.optim.SGD([{"params": [p]} for p in params], lr=lr, weight_decay=weight_decay)
    ordered = sorted(modifiers, key=cmp_to_key(ref_compare))
    lrs, applied = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # torch warns about scheduler.step() before optimizer.step()
        for step in range(total_steps):
            e = ref_epoch(step, spe)
            for m in ordered:
                if m.update_ready(e):
                    m.scheduled_update(opt, e, spe)
            lrs.append([g["lr"] for g in opt.param_groups])
            applied.append([getattr(m, "applied", None) for m in modifiers])
    return lrs, applied


# ---------------------------------------------------------------- the project's values


class Two(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(4, 8, 3)
        self.conv2 = torch.nn.Conv2d(8, 8, 3)
        self.fc = torch.nn.Linear(8, 4)


def our_modifiers(text, spe, *, overrides=None):
    return build_modifiers(load_recipe_text(text, overrides), model=Two(), steps_per_epoch=spe)


def our_lrs(text, *, spe, total_steps, groups=1, lr=0.3):
    model = Two()
    policies, _ = build_recipe_policies(load_recipe_text(text), model=model, steps_per_epoch=spe)
    schedule = next(p for p in policies if isinstance(p, RecipeSchedule))
    params = list(model.parameters())
    split = [params[i::groups] for i in range(groups)]
    opt = torch.optim.SGD([{"params": p} for p in split], lr=lr)
    state = TrainState(model=model, forward_model=model, optimizer=opt, device=torch.device("cpu"),
                       steps_per_epoch=spe, num_epochs=math.ceil(total_steps / spe), seed=0)
    schedule.on_fit_start(state)
    return [[schedule.value_at(s, "lr", g) for g in range(groups)] for s in range(total_steps)]


def our_applied(modifier, *, total_steps):
    """The target sparsity in force at each step: the value of the modifier's last update at or before it."""
    modifier.plan(total_steps)
    out, current = [], None
    for step in range(total_steps):
        if modifier.is_update(step):
            if isinstance(modifier, ACDCPruningModifier):
                current = modifier.sparsity if modifier.phase_at(step)[1] else 0.0
            else:
                current = modifier.sparsity_at(step)
        out.append(current)
    return out


def assert_same(ours, ref, what):
    for step, (a, b) in enumerate(zip(ours, ref)):
        same = a is b is None or (a is not None and b is not None and a == pytest.approx(b, rel=1e-9, abs=1e-12))
        assert same, f"{what}: step {step}: ours {a}, SparseML {b}"


# ---------------------------------------------------------------- row 1: AC/DC phases


ACDC = """
modifiers:
  - !ACDCPruningModifier
    compression_sparsity: 0.85
    start_epoch: {start}
    end_epoch: {end}
    update_frequency: {freq}
    params: __ALL_PRUNABLE__
"""


@pytest.mark.parametrize("start, end, freq, spe", [(0, 7, 3, 3), (1, 6, 2, 2), (0, 100, 5, 1), (0, 10, 5, 2),
                                                   (2, 9, 1, 3), (0, 6, 2, 4)])
def test_row1_acdc_phases_equal_sparseml_and_end_compressed(start, end, freq, spe):
    ours = our_modifiers(ACDC.format(start=start, end=end, freq=freq), spe)[0]
    total = (end + 2) * spe
    _, ref = ref_run([RefACDC(start, end, freq, 0.85)], spe=spe, total_steps=total)
    got = our_applied(ours, total_steps=total)
    assert_same(got, [r[0] for r in ref], "AC/DC applied sparsity")
    assert got[-1] == 0.85, "AC/DC always ends compressed"


def test_row1_property_random_acdc_spans_end_compressed_at_the_target():
    rng = random.Random(0)
    for _ in range(60):
        start, freq, spe = rng.randint(0, 4), rng.randint(1, 6), rng.randint(1, 4)
        end = start + rng.randint(1, 30)
        sparsity = rng.choice([0.5, 0.8, 0.85, 0.9, 0.95])
        ours = our_modifiers(ACDC.format(start=start, end=end, freq=freq).replace("0.85", str(sparsity)), spe)[0]
        applied = our_applied(ours, total_steps=end * spe + 1)
        assert applied[-1] == sparsity, (start, end, freq, spe)


# ---------------------------------------------------------------- row 2: training length


def test_row2_training_length_is_the_latest_start_or_end_of_any_modifier_rounded_up():
    recipe = """
modifiers:
  - !EpochRangeModifier
    end_epoch: 52
  - !GMPruningModifier
    init_sparsity: 0.05
    final_sparsity: 0.8
    start_epoch: 10.5
    end_epoch: 159.2
    update_frequency: 1
    params: __ALL_PRUNABLE__
  - !SetLearningRateModifier
    start_epoch: 0
    end_epoch: 300
    learning_rate: 0.01
"""
    mods = our_modifiers(recipe, 10)
    sparseml = max([math.ceil(s) for s in (0, 10.5, 0) if s > -1] + [math.ceil(e) for e in (52, 159.2) if e > -1])
    assert recipe_num_epochs(mods) == sparseml == 160, "SetLearningRateModifier's end_epoch is ignored by SparseML"


def test_row2_a_modifier_that_can_never_act_is_reported(caplog):
    recipe = "modifiers:\n  - !EpochRangeModifier\n    end_epoch: 3\n  - !SetLearningRateModifier\n" \
             "    start_epoch: 3\n    learning_rate: 0.1\n"
    with caplog.at_level("WARNING"):
        build_recipe_policies(load_recipe_text(recipe), model=Two(), steps_per_epoch=4)
    assert "at or after the end of training" in caplog.text and "SetLearningRateModifier" in caplog.text


# ---------------------------------------------------------------- rows 3, 7, 8: GMP on SparseML's clock


GMP = """
modifiers:
  - !GMPruningModifier
    init_sparsity: {init}
    final_sparsity: 0.9
    start_epoch: {start}
    end_epoch: {end}
    update_frequency: {freq}
    inter_func: {func}
    params: __ALL_PRUNABLE__
"""


@pytest.mark.parametrize("start, end, freq, spe, func", [
    (0, 4, -1, 3, "cubic"),          # row 3: every step, a smooth ramp
    (1, 5, -1, 4, "linear"),
    (-1, 3, 1, 4, "cubic"),          # row 7: from -1, interpolated from epoch -1
    (0.5, 3.25, 0.4, 3, "cubic"),    # row 8: fractional epochs and cadence
    (0, 2, 1 / 3, 7, "inverse_cubic"),
    (0.2, 1.7, 0.3, 5, "linear"),
])
def test_rows_3_7_8_gmp_sparsity_at_every_step_equals_sparseml(start, end, freq, spe, func):
    ours = our_modifiers(GMP.format(init=0.05, start=start, end=end, freq=freq, func=func), spe)[0]
    total = (math.ceil(end) + 1) * spe
    _, ref = ref_run([RefGMP(start, end, freq, 0.05, 0.9, func)], spe=spe, total_steps=total)
    assert_same(our_applied(ours, total_steps=total), [r[0] for r in ref], "GMP applied sparsity")


def test_gmp_property_monotone_and_final_at_end_epoch():
    rng = random.Random(1)
    for _ in range(60):
        spe = rng.randint(1, 6)
        start = rng.choice([-1, 0, 0.5, 1, 2.25])
        end = max(start, 0) + rng.choice([0.5, 1, 2, 3.7, 6])
        freq = rng.choice([-1, 0.25, 0.5, 1, 1.5])
        func = rng.choice(["linear", "cubic", "inverse_cubic"])
        ours = our_modifiers(GMP.format(init=0.05, start=start, end=end, freq=freq, func=func), spe)[0]
        total = (math.ceil(end) + 1) * spe
        applied = [a for a in our_applied(ours, total_steps=total) if a is not None]
        assert all(b >= a for a, b in zip(applied, applied[1:])), (start, end, freq, spe, func)
        end_step = ours.end_step
        assert our_applied(ours, total_steps=total)[end_step] == 0.9, "final_sparsity at end_epoch"


def test_row8_epochs_become_the_first_step_at_or_after_them():
    mod = our_modifiers(GMP.format(init=0.05, start=0.5, end=1.25, freq=1, func="linear"), 3)[0]
    # SparseML's epochs at spe 3: 0, 1/3, 2/3, 1, 4/3 ...: 0.5 -> step 2 (2/3), 1.25 -> step 4 (4/3)
    assert (mod.start_step, mod.end_step) == (2, 4)


# ---------------------------------------------------------------- rows 4, 5, 6, 7: learning rates


LR_CASES = {
    "row4_function_then_hold": ("""
modifiers:
  - !EpochRangeModifier
    end_epoch: 6
  - !LearningRateFunctionModifier
    start_epoch: 0.5
    end_epoch: 3.5
    lr_func: cosine
    init_lr: 0.1
    final_lr: 0.01
""", [RefLRFunction(0.5, 3.5, "cosine", 0.1, 0.01)], 3, 1),
    "row4_linear_fractional_end": ("""
modifiers:
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: 2.4
    lr_func: linear
    init_lr: 0.2
    final_lr: 0.0
""", [RefLRFunction(0, 2.4, "linear", 0.2, 0.0)], 5, 1),
    "row5_two_writers_later_end_wins": ("""
modifiers:
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: 4
    lr_func: linear
    init_lr: 0.1
    final_lr: 0.0
  - !LearningRateFunctionModifier
    start_epoch: 1
    end_epoch: 2
    lr_func: linear
    init_lr: 0.5
    final_lr: 0.4
""", [RefLRFunction(0, 4, "linear", 0.1, 0.0), RefLRFunction(1, 2, "linear", 0.5, 0.4)], 4, 1),
    "row6_set_lr_persists_under_a_scheduler": ("""
modifiers:
  - !EpochRangeModifier
    end_epoch: 8
  - !LearningRateModifier
    start_epoch: 0
    lr_class: StepLR
    lr_kwargs: {step_size: 2, gamma: 0.5}
    init_lr: 0.1
  - !SetLearningRateModifier
    start_epoch: 3
    learning_rate: 0.04
""", [RefLRScheduler("StepLR", {"step_size": 2, "gamma": 0.5}, 0.1, 0), RefSetLR(3, 0.04)], 3, 1),
    "row7_multistep_from_minus_one": ("""
modifiers:
  - !EpochRangeModifier
    end_epoch: 6
  - !LearningRateModifier
    start_epoch: -1
    lr_class: MultiStepLR
    lr_kwargs: {milestones: [2, 4], gamma: 0.1}
    init_lr: 0.1
""", [RefLRScheduler("MultiStepLR", {"milestones": [2, 4], "gamma": 0.1}, 0.1, -1)], 3, 1),
    "multistep_fractional_start_and_end": ("""
modifiers:
  - !LearningRateModifier
    start_epoch: 0.5
    end_epoch: 5
    lr_class: MultiStepLR
    lr_kwargs: {milestones: [1.5, 3], gamma: 0.3}
    init_lr: 0.2
""", [RefLRScheduler("MultiStepLR", {"milestones": [1.5, 3], "gamma": 0.3}, 0.2, 0.5, 5)], 4, 1),
    "exponential_and_set_lr_for_one_group": ("""
modifiers:
  - !EpochRangeModifier
    end_epoch: 5
  - !LearningRateModifier
    start_epoch: 1
    lr_class: ExponentialLR
    lr_kwargs: {gamma: 0.5}
    init_lr: 0.1
  - !SetLearningRateModifier
    start_epoch: 0
    learning_rate: 0.07
    param_groups: [1]
""", [RefLRScheduler("ExponentialLR", {"gamma": 0.5}, 0.1, 1), RefSetLR(0, 0.07, [1])], 3, 2),
    "cosine_warm_restarts": ("""
modifiers:
  - !EpochRangeModifier
    end_epoch: 7
  - !LearningRateModifier
    start_epoch: 1
    lr_class: CosineAnnealingWarmRestarts
    lr_kwargs: {lr_min: 0.001, cycle_epochs: 2}
    init_lr: 0.1
""", [RefLRScheduler("CosineAnnealingWarmRestarts", {"lr_min": 0.001, "cycle_epochs": 2}, 0.1, 1)], 4, 1),
    "cyclic_linear": ("""
modifiers:
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: 5
    lr_func: cyclic_linear
    cycle_epochs: 2
    init_lr: 0.1
    final_lr: 0.01
""", [RefLRFunction(0, 5, "cyclic_linear", 0.1, 0.01, cycle=2)], 3, 1),
}


@pytest.mark.parametrize("case", sorted(LR_CASES))
def test_rows_4_5_6_7_lr_at_every_step_equals_sparseml(case):
    text, ref_modifiers, spe, groups = LR_CASES[case]
    total = recipe_num_epochs(our_modifiers(text, spe)) * spe
    ref, _ = ref_run(ref_modifiers, spe=spe, total_steps=total, groups=groups)
    ours = our_lrs(text, spe=spe, total_steps=total, groups=groups)
    for step, (a, b) in enumerate(zip(ours, ref)):
        assert a == pytest.approx(b, rel=1e-9), f"{case}: step {step}: ours {a}, SparseML {b}"


def test_row4_final_lr_holds_from_end_epoch_on():
    text = LR_CASES["row4_function_then_hold"][0]
    lrs = our_lrs(text, spe=2, total_steps=12)
    end_step = 7    # epoch 3.5 at 2 steps per epoch
    assert lrs[end_step - 1] != [pytest.approx(0.01)]
    assert all(lr == [pytest.approx(0.01)] for lr in lrs[end_step:])
    # When end_epoch falls between steps, SparseML writes the function's value at the first step past it
    # (the parity test above checks that case step by step).


# ---------------------------------------------------------------- row 12: SparseML's validation


@pytest.mark.parametrize("text, message", [
    ("  - !LearningRateFunctionModifier\n    start_epoch: 0\n    end_epoch: 2\n    lr_func: linear\n"
     "    init_lr: 1.5\n    final_lr: 0.1\n", "init_lr must be within [0.0, 1.0]"),
    ("  - !LearningRateFunctionModifier\n    start_epoch: 0\n    end_epoch: 2\n    lr_func: linear\n"
     "    init_lr: 0.5\n    final_lr: -0.1\n", "final_lr must be within [0.0, 1.0]"),
    ("  - !LearningRateModifier\n    start_epoch: 1\n    end_epoch: 5\n    lr_class: MultiStepLR\n"
     "    lr_kwargs: {milestones: [1, 3]}\n    init_lr: 0.1\n", "milestones [1, 3] must all lie after start_epoch"),
    ("  - !LearningRateModifier\n    start_epoch: 0\n    end_epoch: 5\n    lr_class: MultiStepLR\n"
     "    lr_kwargs: {milestones: [2, 6]}\n    init_lr: 0.1\n", "before end_epoch 5"),
    ("  - !ACDCPruningModifier\n    compression_sparsity: 0.9\n    start_epoch: 0.5\n    end_epoch: 10\n"
     "    update_frequency: 2\n    params: __ALL_PRUNABLE__\n", "whole-number epochs"),
    ("  - !ACDCPruningModifier\n    compression_sparsity: 0.9\n    start_epoch: 0\n    end_epoch: 10\n"
     "    update_frequency: 2.5\n    params: __ALL_PRUNABLE__\n", "update_frequency is 2.5"),
    ("  - !GMPruningModifier\n    final_sparsity: 0.9\n    start_epoch: 0\n    end_epoch: 2\n    phased: true\n"
     "    params: __ALL_PRUNABLE__\n", "phased"),
])
def test_row12_values_sparseml_refuses_are_refused(text, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        our_modifiers("modifiers:\n" + text, 4)


# ---------------------------------------------------------------- the rest of the missing pieces


def test_gmp_accepts_sparseml_fields_mapping_with_empty_params_and_from_param():
    model = Two()
    with torch.no_grad():
        model.conv1.weight[:, :2] = 0           # conv1 starts 50% sparse
    text = """
modifiers:
  - !GMPruningModifier
    init_sparsity: __FROM_PARAM__
    final_sparsity: {0.8: ['conv1.weight'], 0.6: ['conv2.weight']}
    start_epoch: 0
    end_epoch: 2
    update_frequency: 1
    params: []
    log_types: __ALL__
    phased: false
    score_type: magnitude
"""
    gmp = build_modifiers(load_recipe_text(text), model=model, steps_per_epoch=2)[0]
    assert gmp.param_names == ["conv1.weight", "conv2.weight"]
    assert gmp.sparsity_at(0) == {"conv1.weight": 0.5, "conv2.weight": 0.0}
    assert gmp.sparsity_at(4) == {"conv1.weight": 0.8, "conv2.weight": 0.6}


# ---------------------------------------------------------------- row 13: --recipe_args and YAML anchors


ANCHORED = """
num_epochs: &num_epochs 10
lr: &lr 0.1
not_used: 3
modifiers:
  - !EpochRangeModifier
    end_epoch: *num_epochs
  - !SetLearningRateModifier
    start_epoch: 0
    learning_rate: *lr
  - !GMPruningModifier
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: *num_epochs
    update_frequency: 1
    params: [*lr]
"""


def test_row13_recipe_args_reach_values_given_by_yaml_aliases(caplog):
    text = ANCHORED.replace("    params: [*lr]\n", "    params: __ALL_PRUNABLE__\n")
    plain = load_recipe_text(text)
    assert plain.groups["modifiers"][0].args["end_epoch"] == 10
    with caplog.at_level("WARNING"):
        recipe = load_recipe_text(text, {"num_epochs": 4, "lr": 0.05})
    args = [spec.args for spec in recipe.groups["modifiers"]]
    assert args[0]["end_epoch"] == 4 and args[2]["end_epoch"] == 4 and args[1]["learning_rate"] == 0.05
    assert "no effect" not in caplog.text
    assert recipe_num_epochs(build_modifiers(recipe, model=Two(), steps_per_epoch=2)) == 4


def test_an_override_no_modifier_uses_is_reported(caplog):
    with caplog.at_level("WARNING"):
        load_recipe_text(ANCHORED.replace("    params: [*lr]\n", "    params: __ALL_PRUNABLE__\n"),
                         {"not_used": 5})
    assert "--recipe_args not_used: no modifier uses it; overriding it has no effect" in caplog.text


def test_a_constant_pruning_of_dense_weights_is_reported(caplog, make_manager):
    text = "modifiers:\n  - !EpochRangeModifier\n    end_epoch: 1\n  - !ConstantPruningModifier\n" \
           "    params: __ALL_PRUNABLE__\n  - !GMPruningModifier\n    final_sparsity: 0.0\n    start_epoch: 0\n" \
           "    end_epoch: 1\n    params: __ALL_PRUNABLE__\n"
    with caplog.at_level("WARNING"):
        manager, _, _ = make_manager(text)
        manager.fit()
    assert "hold no zeros: there is no sparsity to keep" in caplog.text
    assert "final_sparsity is 0: this modifier prunes nothing" in caplog.text
