"""The events of training, in one place: the policies in phase order, the state they act on, an epoch's start and
an optimizer step's events. `policies.manager.Manager` (our loop) and `policies.recipe.manager.RecipeManager` (a
user's loop) both drive their policies through it, so a recipe sees the same events in either."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from policies.base import Policy, RunContext, TrainState, in_phase_order
from policies.events import Event
from utils.seed import seed_epoch


class Driver:
    """Emits events to policies kept in phase order (schedule < mask < average < observe < save)."""

    def __init__(self, state: TrainState, policies: Iterable[Policy]):
        self.state = state
        self.policies = in_phase_order(policies)

    def add(self, policy: Policy) -> None:
        """One more policy, in its phase's place (after those of its phase already there)."""
        self.policies = in_phase_order([*self.policies, policy])

    def wire(self, context: RunContext) -> None:
        """INIT: every policy (the list as it stands now) wires itself from `context`."""
        context.policies = list(self.policies)
        self.state.context = context
        self.emit(Event.INIT)

    def facts(self) -> dict[str, Any]:
        """What the policies say about the run (Policy.facts), merged in their order."""
        out: dict[str, Any] = {}
        for policy in self.policies:
            out.update(getattr(policy, "facts", dict)())
        return out

    def emit(self, event: Event) -> None:
        for policy in self.policies:
            policy.on_event(event, self.state)

    def begin_epoch(self, epoch: int, *, loader: Any = None, reseed: bool = True) -> None:
        """Epoch `epoch` starts: fresh metrics, every random stream reseeded from (seed, epoch) (and `loader`'s),
        EPOCH_START."""
        s = self.state
        s.epoch = epoch
        s.metrics = {"epoch": epoch}
        if reseed:
            seed_epoch(s.seed, epoch, loader)
        self.emit(Event.EPOCH_START)

    def optimizer_step(self, step: Callable[[], Any]) -> Any:
        """AFTER_BACKWARD (masks on the gradients), the optimizer's `step`, the step count, AFTER_OPTIMIZER_STEP
        (masks on the weights, schedules); returns what `step` returned."""
        self.emit(Event.AFTER_BACKWARD)
        out = step()
        self.state.step += 1
        self.emit(Event.AFTER_OPTIMIZER_STEP)
        return out

    def policies_state(self) -> dict[str, Any]:
        """Each policy's state, by name (what a resumed run restores)."""
        return {p.name: p.state_dict() for p in self.policies}

    def load_policies_state(self, saved: Mapping[str, Any]) -> None:
        for policy in self.policies:
            policy.load_state_dict(saved.get(policy.name, {}))
