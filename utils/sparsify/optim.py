"""Optim levels: what a level in [0, 1] asks for (dense/pruned, INT8, size), and the zoo entry that gives it.

Pure functions of the level and the zoo entries.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from utils.errors import UserError
from utils.sparsify.zoo import ZooEntry, empty_zoo_message

Size = Literal["largest", "medium", "smallest"]


@dataclass(frozen=True)
class OptimTarget:
    """What an optim level asks for: a dense or pruned model, INT8 or not, and which size."""

    level: float
    pruned: bool
    int8: bool
    size: Size

    def describe(self) -> str:
        kind = "pruned" if self.pruned else "dense"
        return f"the {self.size} {kind} model" + (" + INT8" if self.int8 else ", fp32 (no optimizations)")


def optim_target(level: float) -> OptimTarget:
    """Sparsify's documented thresholds: 0 | < 0.25 | < 0.5 | < 0.75 | <= 1."""
    if not 0.0 <= level <= 1.0:
        raise UserError(f"--optim-level must be in [0, 1], got {level}")
    if level == 0.0:
        return OptimTarget(level, pruned=False, int8=False, size="largest")
    if level < 0.25:
        return OptimTarget(level, pruned=False, int8=True, size="largest")
    if level < 0.5:
        return OptimTarget(level, pruned=True, int8=True, size="largest")
    if level < 0.75:
        return OptimTarget(level, pruned=True, int8=True, size="medium")
    return OptimTarget(level, pruned=True, int8=True, size="smallest")


@dataclass(frozen=True)
class Selection:
    entry: ZooEntry
    target: OptimTarget
    note: str | None = None


def rank_by_size(entries: Sequence[ZooEntry], size: Size) -> ZooEntry:
    """Largest / upper-median / smallest by nonzero parameters (then parameters, then name)."""
    ordered = sorted(entries, key=lambda e: (e.nonzero_params, e.params, e.name))
    return {"largest": ordered[-1], "medium": ordered[len(ordered) // 2], "smallest": ordered[0]}[size]


def select_model(entries: Sequence[ZooEntry], level: float, *, zoo_path: str | Path = "the zoo") -> Selection:
    """The zoo entry optim level `level` asks for; without a dense/pruned one, the other kind (with a note)."""
    target = optim_target(level)
    if not entries:
        raise UserError(empty_zoo_message(zoo_path))
    pool = [e for e in entries if e.pruned == target.pruned]
    note = None
    if not pool:
        pool = list(entries)
        have, want = ("dense", "pruned") if target.pruned else ("pruned", "dense")
        note = (f"{zoo_path} has no {want} model for optim-level {level:g}, which asks for {target.describe()}; "
                f"using the {target.size} {have} model instead")
    preferred = [e for e in pool if e.quantized == target.int8]
    chosen = rank_by_size(preferred or pool, target.size)
    if note:
        note += f" ({chosen.name})"
    return Selection(entry=chosen, target=target, note=note)
