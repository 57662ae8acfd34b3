"""One generic registry for every kind of plug-in (sources, datasets, metrics, recipes, formats, checks)."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: object, choices, *, n: int = 1) -> str:
    """``"did you mean 'x'? "`` for the closest of ``choices``, or ``""``: the one suggestion
    helper behind every unknown name (plug-ins, spec keys, enum values, preprocessing steps)."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n)
    return f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""


def unknown(what: str, name: object, choices, *, listed: str = "available", n: int = 1, named: bool = True) -> str:
    """The one message for an unknown name: ``unknown recipe 'x'; did you mean 'y'? available: …``
    (``named=False`` leaves the name out, where the message's field path already ends with it)."""
    subject = f"{what} {name!r}" if named else what
    return f"unknown {subject}; {did_you_mean(name, choices, n=n)}{listed}: {', '.join(str(c) for c in choices)}"


class UnknownName(KeyError):
    """An unknown plug-in name; the message lists close matches and what is available."""

    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, available
        super().__init__(unknown(kind, name, available, n=3))

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


class Registry(Generic[T]):
    """Name -> plug-in. Register with ``@registry.register("name")`` or lazily with a
    ``"module:attr"`` string, so heavy modules load only when a spec uses them."""

    def __init__(self, kind: str, *, discover: Callable[[Registry[T]], None] | None = None):
        self.kind = kind
        self._items: dict[str, T | str] = {}
        self._discover = discover  # registers installed plug-ins, once, when a name is first looked up

    def _discovered(self) -> dict[str, T | str]:
        if self._discover is not None:
            discover, self._discover = self._discover, None
            discover(self)
        return self._items

    def register(self, name: str, obj: T | str | None = None) -> Callable[[T], T] | T | str:
        if obj is not None:
            self._add(name, obj)
            return obj

        def deco(o: T) -> T:
            self._add(name, o)
            return o

        return deco

    def _add(self, name: str, obj: T | str) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj

    def unknown(self, name: str) -> UnknownName:
        """The error for a name this registry lacks (did you mean …? available: …)."""
        return UnknownName(self.kind, name, self.names())

    def get(self, name: str) -> T:
        try:
            obj = self._discovered()[name]
        except KeyError:
            raise self.unknown(name) from None
        if isinstance(obj, str):
            mod, _, attr = obj.partition(":")
            obj = getattr(importlib.import_module(mod), attr)
            self._items[name] = obj
        return obj

    def names(self) -> list[str]:
        return sorted(self._discovered())

    def in_order(self) -> list[str]:
        """Names in registration order (for docs and messages that follow the author's order)."""
        return list(self._discovered())

    def __contains__(self, name: object) -> bool:
        return name in self._discovered()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
