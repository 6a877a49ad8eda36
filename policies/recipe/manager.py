"""A recipe inside your own PyTorch training loop, as SparseML's manager ran one.

    from policies.recipe.manager import RecipeManager

    manager = RecipeManager.from_yaml("recipe.yaml", recipe_args={"num_epochs": 10})
    optimizer = manager.modify(model, optimizer, steps_per_epoch=len(loader), seed=0, loader=loader)
    for epoch in range(manager.max_epochs):
        model.train()
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()          # LR/WD, pruning masks, QAT switches: all of the recipe, step by step
    manager.finalize(model)

SparseML                                                 here
  ScheduledModifierManager.from_yaml(path,                 RecipeManager.from_yaml(path, recipe_args={...})
      recipe_variables={...})                              (recipe_variables= is accepted too)
  optimizer = manager.modify(model, optimizer,             optimizer = manager.modify(model, optimizer,
      steps_per_epoch=len(loader))                             steps_per_epoch=len(loader))
  ScheduledOptimizer(optimizer, model, manager, spe)       the same object `modify` returns
  manager.max_epochs                                       manager.max_epochs
  loss = manager.loss_update(loss, model, optimizer,       loss = manager.loss_update(loss, inputs=...,
      epoch, steps_per_epoch, student_outputs=...)             outputs=..., targets=...)   (distillation)
  manager.finalize(model)                                  manager.finalize(model)
  (an EMA copy of the weights: masks not applied)          manager.apply_masks(ema.module) after each update

The modifiers are this project's policies (no second implementation), driven by the same code as
`policies.manager.Manager` (`policies.driver.Driver`: phase order, an epoch's start, an optimizer step's
events). BATCH_START (LR, QAT switches) runs in a forward pre-hook on the first forward in training mode of each
step, AFTER_BACKWARD, the optimizer step and AFTER_OPTIMIZER_STEP (masks) inside `optimizer.step()`. With
`seed=` the manager reseeds every epoch as main.py does (and the `loader`'s generator, and its dataset's
per-sample seeds when it is wrapped in utils.data.seeded.SampleSeeded as main.py's is), so a loop over the same
data repeats a `main.py --recipe` run bit for bit. Gradient accumulation: `steps_per_epoch` counts optimizer
steps (one recipe step each).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from policies.base import Batch, Policy, RunContext, TrainState
from policies.driver import Driver
from policies.events import Event
from policies.masking import MaskPolicy
from policies.modifiers import build_recipe_policies, recipe_max_epochs
from policies.modifiers.distillation import DistillationModifier
from policies.recipe.load import Recipe, load_recipe, load_recipe_text
from utils.errors import UserError

log = logging.getLogger(__name__)


class RecipeManager:
    """A recipe's modifiers driven from a user's loop through the optimizer it wraps (see the module doc)."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.max_epochs = recipe_max_epochs(recipe)
        self.driver: Driver | None = None          # the events, once attached to a model (modify)
        self.loader: Any = None
        self._step_started = False
        self._hook: Any = None
        self._finalized = False
        self._saved: Mapping[str, Any] | None = None
        self._seeded = False
        self._loss_updated = False

    @classmethod
    def from_yaml(cls, recipe: str | Path, recipe_args: str | Mapping[str, Any] | None = None, *,
                  recipe_variables: Mapping[str, Any] | None = None) -> "RecipeManager":
        """A recipe file (YAML or Markdown) or recipe text, with variables overridden (`--recipe_args`)."""
        if recipe_variables is not None and recipe_args is not None:
            raise UserError("give recipe_args or recipe_variables (SparseML's name), not both")
        overrides = recipe_variables if recipe_variables is not None else recipe_args
        text = str(recipe)
        if text.startswith("zoo:"):
            raise UserError(f"{text}: a SparseZoo stub; resolve it to a file with "
                            "utils.sparsify.zoo.resolve_recipe (the local zoo, configs/zoo.yaml) and pass the path")
        if "\n" in text:
            return cls(load_recipe_text(text, overrides, source="<recipe text>"))
        return cls(load_recipe(text, overrides))

    @property
    def state(self) -> TrainState | None:
        return self.driver.state if self.driver is not None else None

    @property
    def policies(self) -> list[Policy]:
        return self.driver.policies if self.driver is not None else []

    @property
    def steps_per_epoch(self) -> int:
        return self._require_state().steps_per_epoch

    def modify(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, steps_per_epoch: int,
               seed: int | None = None, loader: Any = None, teacher: nn.Module | None = None,
               start_epoch: int = 0) -> "RecipeOptimizer":
        """Attach the recipe to `model` and `optimizer`; returns the optimizer to call `step()` on.

        `seed`: reseed each epoch (and `loader`'s generator) as main.py does; `loader` is also what second-order
        pruning samples gradients from; `teacher`: the model a DistillationModifier distils from.
        `start_epoch` > 0 needs `load_state_dict` first (a resumed loop)."""
        if self.state is not None:
            raise UserError("this RecipeManager is already attached to a model; create one per training run")
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise UserError(f"steps_per_epoch must be a positive int (len(train_loader)), got {steps_per_epoch!r}")
        policies, epochs = build_recipe_policies(self.recipe, model=model, steps_per_epoch=steps_per_epoch)
        device = next(model.parameters()).device
        state = TrainState(model=model, forward_model=model, optimizer=optimizer, device=device,
                           steps_per_epoch=steps_per_epoch, num_epochs=epochs, seed=seed or 0, train_loader=loader)
        self.driver, self.loader, self._seeded = Driver(state, policies), loader, seed is not None
        self.driver.wire(RunContext(teacher=teacher))        # a DistillationModifier takes the teacher given
        if self._saved is not None:
            self._restore(self._saved)
        elif start_epoch:
            raise UserError("start_epoch needs the manager's saved state: call load_state_dict(...) before modify")
        self._emit(Event.FIT_START)
        self._begin_epoch()
        self._hook = model.register_forward_pre_hook(self._before_forward)
        return RecipeOptimizer(optimizer, self)

    def loss_update(self, loss: torch.Tensor, *, inputs: torch.Tensor, outputs: torch.Tensor,
                    targets: torch.Tensor | None = None) -> torch.Tensor:
        """The loss with the recipe's terms added (distillation); call it between forward and backward."""
        s = self._require_state()
        self._begin_step()
        s.batch = Batch(inputs, targets, outputs, loss)
        self._emit(Event.AFTER_FORWARD)
        self._loss_updated = True
        return s.batch.loss

    def apply_masks(self, module: nn.Module) -> None:
        """Zero in another copy of the model -- your EMA of the weights (timm's ModelEmaV3 `.module`, torch's
        AveragedModel `.module`) -- every weight the recipe holds at zero now; call it after each update of that
        copy, so it stays as sparse as the model."""
        self._require_state()
        named = dict(module.named_parameters())
        for policy in self.policies:
            masks = policy.held.masks if isinstance(policy, MaskPolicy) and policy.held is not None else None
            for name, mask in (masks or {}).items():
                if name not in named:
                    raise UserError(f"apply_masks: the module has no parameter {name!r} (the recipe masks it); pass "
                                    "a copy of the model itself, e.g. ema.module")
                with torch.no_grad():
                    named[name].mul_(mask.to(named[name].device))

    def finalize(self, model: nn.Module | None = None) -> None:
        """End of training: the recipe's checks run (masks still exact) and the hooks are removed."""
        del model
        self._require_state()
        if self._finalized:
            return
        self._emit(Event.FIT_END)
        if self._hook is not None:
            self._hook.remove()
        self._finalized = True

    def state_dict(self) -> dict[str, Any]:
        """What a resumed loop needs (with the model's and optimizer's own state dicts)."""
        s = self._require_state()
        return {"step": s.step, "policies": self.driver.policies_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state_dict()`; call before `modify` (with the restored model and optimizer)."""
        if self.state is not None:
            raise UserError("load_state_dict must come before modify(...)")
        self._saved = dict(state)

    # ------------------------------------------------------------------ the events of one step

    def _require_state(self) -> TrainState:
        if self.state is None:
            raise UserError("call manager.modify(model, optimizer, steps_per_epoch=...) first")
        return self.state

    def _restore(self, saved: Mapping[str, Any]) -> None:
        s = self._require_state()
        self.driver.load_policies_state(saved["policies"])
        s.step = int(saved["step"])
        s.epoch = s.step // s.steps_per_epoch

    def _emit(self, event: Event) -> None:
        self.driver.emit(event)

    def _begin_epoch(self) -> None:
        self.driver.begin_epoch(self._require_state().epoch, loader=self.loader, reseed=self._seeded)

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        del args
        if module.training and not self._finalized:
            self._begin_step()

    def _begin_step(self) -> None:
        if not self._step_started:
            self._step_started = True
            self._emit(Event.BATCH_START)

    def _optimizer_step(self, step: Callable[[], Any]) -> Any:
        s = self._require_state()
        if self._finalized:
            return step()
        self._begin_step()      # the model never ran in training mode this step: the schedule still applies
        distilling = [p for p in self.policies if isinstance(p, DistillationModifier) and p.active(s.step)]
        if distilling and not self._loss_updated:
            raise UserError(f"{distilling[0].source}: the recipe distils at this step; compute the loss with "
                            "loss = manager.loss_update(loss, inputs=..., outputs=..., targets=...) before backward()")
        out = self.driver.optimizer_step(step)
        s.batch, self._step_started, self._loss_updated = None, False, False
        if s.step % s.steps_per_epoch == 0:
            self._emit(Event.EPOCH_END)
            s.epoch = s.step // s.steps_per_epoch
            self._begin_epoch()
        return out


class RecipeOptimizer:
    """The user's optimizer with the recipe applied on every `step()` (SparseML's ScheduledOptimizer)."""

    def __init__(self, optimizer: torch.optim.Optimizer, manager: RecipeManager):
        self.__dict__["optimizer"] = optimizer
        self.__dict__["manager"] = manager

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        return self.manager._optimizer_step(lambda: self.optimizer.step(closure))

    def __getattr__(self, name: str) -> Any:      # zero_grad, param_groups, state_dict, ...
        return getattr(self.optimizer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.optimizer, name, value)

    def __repr__(self) -> str:
        return f"RecipeOptimizer({self.optimizer!r}, recipe={self.manager.recipe.source})"
