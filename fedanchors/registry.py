"""Name -> object registries filled by a ``@register("name")`` decorator.

One registry per kind (encoders, heads, scenarios, methods, separation losses). An
unknown name is a user error that lists the valid names, raised at config load.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from fedanchors.errors import ConfigError
from fedanchors.names import name_problem

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of builders; ``register`` is the decorator that fills it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under ``name``."""

        why = name_problem(name)  # a registered name reaches config keys, metric keys and paths
        if why:
            raise ValueError(f"{self.kind} name {name!r} is not a valid name ({why})")

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str, key: str = "") -> T:
        """The object registered as ``name``; a ConfigError naming ``key`` otherwise."""
        if name not in self._items:
            where = f"{key}: " if key else ""
            hint = difflib.get_close_matches(name, self._items, n=1)
            close = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{where}unknown {self.kind} {name!r}{close}; valid: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __iter__(self):
        """Names in registration order (built-ins first, then plugins)."""
        return iter(list(self._items))

    def __contains__(self, name: str) -> bool:
        return name in self._items
