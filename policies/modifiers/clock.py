"""SparseML's clock: at which optimizer steps a recipe modifier acts, as SparseML's wrapped optimizer decides.

SparseML calls every modifier before optimizer step `s` (counted from 0) with the epoch
`s // steps_per_epoch + (s % steps_per_epoch) / steps_per_epoch`, a float computed exactly this way. A
modifier starts at the first step whose epoch is >= its start_epoch (start_epoch -1: step 0) and ends at
the first step whose epoch is >= its end_epoch (end_epoch -1: never), updating at both. A modifier with an
update frequency also updates at every step in between (frequency -1), or at the first step whose epoch is
>= the epoch of its previous update plus the frequency. Everything here is a pure function of the step.
"""
from __future__ import annotations

import math
from typing import Iterator


def step_epoch(step: int, steps_per_epoch: int) -> float:
    """The epoch SparseML passes to modifiers before optimizer step `step`."""
    return float(step // steps_per_epoch) + float(step % steps_per_epoch) / float(steps_per_epoch)


def first_step_at(epoch: float, steps_per_epoch: int) -> int:
    """The first step whose epoch is >= `epoch` (step 0 for a negative epoch)."""
    if epoch <= 0:
        return 0
    step = max(0, math.floor(epoch * steps_per_epoch) - 2)
    while step_epoch(step, steps_per_epoch) < epoch:
        step += 1
    return step


def start_step(start_epoch: float, steps_per_epoch: int) -> int:
    """Where a modifier starts: step 0 for start_epoch -1 (SparseML's 'from the start')."""
    return 0 if start_epoch == -1 else first_step_at(start_epoch, steps_per_epoch)


def end_step(end_epoch: float, steps_per_epoch: int) -> int | None:
    """Where a modifier ends (it still updates there); None for end_epoch -1 (never)."""
    return None if end_epoch < 0 else first_step_at(end_epoch, steps_per_epoch)


def update_steps(*, start_epoch: float, end_epoch: float, update_frequency: float, steps_per_epoch: int,
                 total_steps: int) -> Iterator[int]:
    """The steps below `total_steps` at which a modifier with an update frequency updates, in order."""
    first = start_step(start_epoch, steps_per_epoch)
    last = end_step(end_epoch, steps_per_epoch)
    if first >= total_steps:
        return
    yield first
    if last is not None and last <= first:     # started and ended on the same step
        return
    stop = total_steps if last is None else min(last, total_steps)
    previous = step_epoch(first, steps_per_epoch)
    step = first + 1
    while step < stop:
        if update_frequency == -1:
            yield step
            step += 1
            continue
        step = max(step, first_step_at(previous + update_frequency, steps_per_epoch))
        if step >= stop:
            break
        previous = step_epoch(step, steps_per_epoch)
        yield step
        step += 1
    if last is not None and last < total_steps:
        yield last


def manager_order(end_epoch: float, start_epoch: float, position: int) -> tuple:
    """Where SparseML's manager puts a modifier among those updating on one step: by end_epoch (-1, never
    ending, last), then start_epoch, then (SparseML: a hash of its arguments; here) its place in the recipe."""
    return (math.inf if end_epoch == -1 else end_epoch, start_epoch, position)
