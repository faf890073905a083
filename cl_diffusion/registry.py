"""Named registries of presets: strategies, benchmarks, model presets, profiles.

A registry refuses duplicate names, lists its entries for ``--list`` and the CLI ``choices``,
and raises :class:`~cl_diffusion.errors.UserError` naming the valid choices on a bad name.
Outside packages can add entries through an entry-point group (e.g. ``cl_diffusion.strategies``).
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

from .errors import choice_error

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping that refuses duplicates.

    Args:
        kind: what the entries are, used in error messages (e.g. ``"strategy"``).
        entry_point_group: optional entry-point group scanned once, lazily, on first lookup.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._plugins_loaded = entry_point_group is None

    def add(self, name: str, obj: T) -> T:
        if name in self._entries and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(obj: T) -> T:
            return self.add(name, obj)

        return deco

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            obj = ep.load()  # importing the module usually registers it; a returned class is added too
            if ep.name not in self._entries:
                self.add(ep.name, obj)

    def get(self, name: str) -> T:
        self._load_plugins()
        if name not in self._entries:
            raise choice_error(self.kind, name, self.names())
        return self._entries[name]

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]
