"""What every entry point does with its parsed flags: logging set-up and validated options."""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Iterator, TypeVar

from pydantic import BaseModel

from utils.config import validate
from utils.errors import UserError

M = TypeVar("M", bound=BaseModel)
NOT_OPTIONS = ("no_progress", "verbose")


def setup_logging(verbose: bool = False, *, quiet: bool = False) -> None:
    """The one logging set-up of every entry point: INFO (WARNING when `quiet`), one step more with --verbose."""
    if quiet:
        level = logging.INFO if verbose else logging.WARNING
    else:
        level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@contextlib.contextmanager
def quietly(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """These loggers say only messages of `level` and above inside the block: a command that reads the same data,
    checkpoint or recipe a second time (to check it before training, or to sample it after) says so once."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), level))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def bars_on(progress: bool) -> bool:
    """Draw progress bars only on a terminal: in a Slurm log or `make demo > log` every redraw is a new line,
    so there callers log one line per epoch (or every `LOG_EVERY_S` seconds) instead."""
    return progress and sys.stderr.isatty()


LOG_EVERY_S = 30.0


def parse_gpus(values: list[str] | None) -> list[int] | None:
    """`--gpus 0 1` or `--gpus 0,1` -> [0, 1]."""
    if not values:
        return None
    try:
        return [int(g) for v in values for g in str(v).split(",") if g.strip()]
    except ValueError:
        raise UserError(f"--gpus expects GPU ids like '0' or '0,1', got {' '.join(values)}") from None


def options_from_args(args: argparse.Namespace, model: type[M]) -> M:
    """Validate the flags that were given (None = not given) as `model`; `--no_progress` -> progress."""
    values = {k: v for k, v in vars(args).items() if k not in NOT_OPTIONS and v is not None}
    if "gpus" in values:
        values["gpus"] = parse_gpus(values["gpus"])
    if hasattr(args, "no_progress"):
        values["progress"] = not args.no_progress
    return validate(values, model, source="command line")
