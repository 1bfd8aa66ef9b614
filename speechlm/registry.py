"""A small typed registry: one per plug-in kind (tokenizers, tasks, strategies, backbones, metrics).

Built-in plug-ins register themselves with ``@REGISTRY.register(name)``. An installed package can
add its own through an entry point in the registry's group, e.g. in its ``pyproject.toml``::

    [project.entry-points."speechlm.tokenizers"]
    my_codec = "my_package.codec:MyCodec"

The entry point's name is the plug-in's name and its object is registered under it. Entry points
are looked up on the first lookup of the registry and loaded when their name is first asked for,
so an installed plug-in costs nothing until it is used; one that fails to load raises
:class:`PluginLoadError` naming the entry point and its package.
"""
from __future__ import annotations

import difflib
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

#: the entry-point groups of the registries other packages can extend
ENTRY_POINT_GROUPS = ("speechlm.tokenizers", "speechlm.metrics", "speechlm.backbones", "speechlm.strategies")


class PluginLoadError(RuntimeError):
    """An installed package's entry point names a plug-in that cannot be loaded."""


def suggest(name: str, choices) -> str:
    """Return ' (did you mean X?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(ep: metadata.EntryPoint) -> str:
    dist = f" of package {ep.dist.name} {ep.dist.version}" if ep.dist is not None else ""
    return f"entry point {ep.name!r} = {ep.value!r} (group {ep.group}){dist}"


class Registry(Generic[T]):
    """Maps names to plug-ins; ``entry_points`` names the group installed packages extend it by.

    Example:
        >>> METRICS = Registry("metric")
        >>> @METRICS.register("wer")
        ... def wer(): ...
        >>> METRICS.get("wer") is wer
        True
    """

    def __init__(self, kind: str, entry_points: str | None = None) -> None:
        self.kind = kind
        self.group = entry_points
        self._items: dict[str, T] = {}
        self._entry_points: dict[str, list[metadata.EntryPoint]] | None = None  # found on first lookup

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def _plugins(self) -> dict[str, list[metadata.EntryPoint]]:
        """Entry points of installed packages by name (none without a group)."""
        if self._entry_points is None:
            found: dict[str, list[metadata.EntryPoint]] = {}
            if self.group:
                for ep in metadata.entry_points(group=self.group):
                    same = found.setdefault(ep.name, [])
                    if all(ep.value != other.value for other in same):  # a package seen twice is one
                        same.append(ep)
            self._entry_points = found
        return self._entry_points

    def _load(self, name: str) -> None:
        eps = self._plugins()[name]
        if len(eps) > 1:
            raise PluginLoadError(f"{self.kind} {name!r} is defined by several installed packages: "
                                  f"{'; '.join(_describe(ep) for ep in eps)}; uninstall all but one")
        try:
            obj = eps[0].load()
        except Exception as e:  # any error of foreign code: say whose it is
            raise PluginLoadError(f"{self.kind} {name!r}: {_describe(eps[0])} failed to load: "
                                  f"{type(e).__name__}: {e}") from e
        if self._items.get(name) is not obj:  # the plug-in's module may have registered it itself
            self.register(name)(obj)

    def get(self, name: str) -> T:
        if name not in self._items and name in self._plugins():
            self._load(name)
        if name not in self._items:
            choices = self.names()
            raise KeyError(
                f"unknown {self.kind} {name!r}{suggest(name, choices)}; "
                f"valid choices: {', '.join(choices)}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        """Registered names and those of installed plug-ins (not loaded by listing them)."""
        return sorted(set(self._items) | set(self._plugins()))

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._plugins()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


__all__ = ["ENTRY_POINT_GROUPS", "PluginLoadError", "Registry", "suggest"]
