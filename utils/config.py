"""Typed, strict config loading: every YAML file maps onto a pydantic model with extra='forbid'."""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from utils.errors import UserError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, turning missing files and syntax errors into UserErrors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found; check the path")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None


def validate(data: Any, model: type[M], *, source: str) -> M:
    """Validate `data` against `model`; errors name the source, the key path and the expectation."""
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<top level>"
        more = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
        got = first.get("input")
        got_txt = "" if first["type"] == "missing" or isinstance(got, dict) else f"; got {got!r}"
        raise UserError(f"{source}: key '{where}': {first['msg']}{got_txt}{more}") from None


def load_config(path: str | Path, model: type[M]) -> M:
    """Read and validate one YAML config file."""
    return validate(read_yaml(path), model, source=str(path))


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)
