"""Typed, strict config loading: every YAML file maps onto a pydantic model with extra='forbid'."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from utils.errors import UserError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


MIN_IMAGE_SIZE = 8   # px, the least --image_size: below it a resize leaves nothing of an image (torch's fails at 1)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, turning missing files and syntax errors into UserErrors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found; check the path")
    try:
        return yaml.safe_load(read_text(path))
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None


def read_text(path: str | Path) -> str:
    """A text file as UTF-8; anything else is a UserError naming the file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start:err.start + 1]!r}); "
                        "save it as UTF-8") from None


def validate(data: Any, model: type[M], *, source: str) -> M:
    """Validate `data` against `model`; errors name the source, the key path and the expectation."""
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as err:
        errors = err.errors()
        # A misspelt key shows up as an unknown key plus a missing one: name the misspelling first.
        errors.sort(key=lambda e: e["type"] != "extra_forbidden")
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
        if not where:                            # a rule over several keys (a model validator)
            raise UserError(f"{source}: {first['msg'].removeprefix('Value error, ')}{more}") from None
        if first["type"] == "extra_forbidden":
            raise UserError(f"{source}: key '{where}' is not a valid key{_did_you_mean(first, errors)}{more}") from None
        got = first.get("input")
        got_txt = "" if first["type"] == "missing" or isinstance(got, dict) else f"; got {got!r}"
        raise UserError(f"{source}: key '{where}': {first['msg']}{got_txt}{more}") from None


def _did_you_mean(extra: dict, errors: list[dict]) -> str:
    """' (did you mean 'lr'?)' when a required key is missing beside the unknown one."""
    parent = extra["loc"][:-1]
    missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == parent]
    close = difflib.get_close_matches(str(extra["loc"][-1]), missing, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def load_config(path: str | Path, model: type[M]) -> M:
    """Read and validate one YAML config file."""
    return validate(read_yaml(path), model, source=str(path))


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)
