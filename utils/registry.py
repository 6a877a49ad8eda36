"""One registry class; one instance per kind (architectures, datasets, flavours, policies...)."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from utils.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map that refuses duplicates and explains unknown names. `loader` (registries of YAML files:
    datasets, checkpoint flavours) fills it on first use, not at import: a broken file then fails the command that
    reads it, with its name and key, instead of every import of the package."""

    def __init__(self, kind: str, *, loader: Callable[[], None] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._loader = loader
        self._resolvers: dict[str, Callable[[str], T]] = {}

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None       # the loader itself adds: no second call
            try:
                loader()
            except BaseException:
                self._items.clear()
                self._loader = loader                       # a fixed file loads on the next use
                raise

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering an object under `name` (default: its __name__)."""

        def deco(obj: T) -> T:
            self.add(name or getattr(obj, "__name__"), obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        """Register `obj` under `name`; a duplicate name raises."""
        if self._loader is not None:
            self._load()
        if name in self._items:
            raise ValueError(f"duplicate {self.kind} name {name!r}")
        self._items[name] = obj

    def add_resolver(self, prefix: str, resolve: Callable[[str], T]) -> None:
        """Names 'prefix:rest' are looked up by `resolve(rest)` (a library's own catalogue: timm, torchvision),
        which raises a UserError for an unknown one."""
        self._resolvers[prefix] = resolve

    def prefixes(self) -> list[str]:
        return sorted(self._resolvers)

    def get(self, name: str) -> T:
        """Look up `name`; an unknown name raises a UserError listing valid names."""
        self._load()
        prefix, colon, rest = str(name).partition(":")
        if colon and prefix in self._resolvers:
            return self._resolvers[prefix](rest)
        if name not in self._items:
            raise UserError(unknown_name_message(self.kind, name, self.names()))
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._items)


def unknown_name_message(kind: str, name: str, valid: list[str], *, none: str = "there are none") -> str:
    """'unknown X 'foo' (did you mean 'fo'?); valid: a, b' -- shared by registries and recipes; with nothing valid,
    'unknown X 'foo'; <none>'."""
    if not valid:
        return f"unknown {kind} {name!r}; {none}"
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; valid: {', '.join(valid)}"
