"""Errors caused by user input: entry points print them as one line and exit non-zero."""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable


class UserError(Exception):
    """A mistake in a file, flag or path the user controls; the message says how to fix it."""


def one_line(message: str) -> str:
    """The user's message, without the worker traceback a DataLoader wraps around errors raised in its workers."""
    if "Original Traceback" in message:
        last = message.strip().splitlines()[-1]
        return last.split("UserError: ", 1)[-1]
    return message


def exit_on_user_error(fn: Callable[..., object]) -> Callable[..., object]:
    """Wrap an entry point: a UserError becomes `error: <message>` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            logging.getLogger(__name__).debug("user error", exc_info=True)
            print(f"error: {one_line(str(err))}", file=sys.stderr)
            sys.exit(2)

    return wrapper
