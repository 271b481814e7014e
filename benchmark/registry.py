"""One registry pattern for attacks, defenses and datasets.

Models use timm's own registry (see :mod:`models`); everything else uses :class:`Registry`.

Example:
    >>> from dglbench.registry import Registry
    >>> fruits = Registry("fruit")
    >>> @fruits.register("apple")
    ... class Apple:
    ...     pass
    >>> fruits.list("a*")
    ['apple']
    >>> fruits.get("apple") is Apple
    True
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from dglbench.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → object mapping with decorator registration and wildcard listing.

    Args:
        kind: what is registered ("attack", "defense", ...); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator that registers an object under ``name`` (default: its ``__name__``, lower-cased)."""

        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__", "").lower()
            if not key:
                raise ValueError(f"cannot register an unnamed {self.kind}")
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name raises :class:`UnknownNameError`."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint} (available: {', '.join(sorted(self._entries))})"
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Instantiate the registered class/factory ``name`` with ``kwargs``; bad arguments are a ConfigError."""
        factory = self.get(name)
        try:
            return factory(**kwargs)  # type: ignore[operator]
        except TypeError as exc:
            raise ConfigError(f"bad arguments for {self.kind} {name!r}: {exc}") from None

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style wildcard ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
