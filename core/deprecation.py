"""Moved public names keep working: aliases that warn, for at least one minor release.

A public name (importable from ``thawkit`` or documented in the docs) is a promise. When one
moves, its old home keeps an alias that hands out the object from the new home and warns with a
:class:`DeprecationWarning` naming the new place, and CHANGELOG.md lists the move (the API test,
tests/test_api.py, holds both to it).

A plugin module whose names moved keeps them with a module ``__getattr__`` (PEP 562), which
runs only for names the module no longer defines::

    import thawkit

    __getattr__ = thawkit.moved_names(__name__, {
        "layout_from_prefixes": "thawkit:layout_from_prefixes",
    })

A target is ``"module:attribute"``; it is imported only when the old name is used.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def resolve(target: str) -> Any:
    """The object a ``"module:attribute"`` (or ``"module"``) target names, imported on demand."""
    module, _, attribute = target.partition(":")
    value: Any = importlib.import_module(module)
    for part in attribute.split(".") if attribute else ():
        value = getattr(value, part)
    return value


def dotted(target: str) -> str:
    """``"thawkit:layout_from_prefixes"`` -> ``"thawkit.layout_from_prefixes"``."""
    return target.replace(":", ".")


def warn_moved(old: str, target: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` moved to ``target``; ``stacklevel`` 3 points at the caller's caller."""
    warnings.warn(f"{old} has moved to {dotted(target)}: import it from there ({old} is a "
                  "deprecated alias, kept for at least one minor release; see CHANGELOG.md)",
                  DeprecationWarning, stacklevel=stacklevel)


def moved_names(module: str, moves: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves ``moves`` (old name -> ``"module:attribute"``).

    Each use of an old name warns (a :class:`DeprecationWarning` naming the new place) and
    returns the object from its new home; any other missing name is an ``AttributeError``.
    """
    table = dict(moves)

    def __getattr__(name: str) -> Any:
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warn_moved(f"{module}.{name}", target)
        return resolve(target)

    __getattr__.moves = table  # type: ignore[attr-defined]  # read by tests/test_api.py
    return __getattr__


class _MovedModule(types.ModuleType):
    """An old module path: every attribute comes from the module that took its place."""

    def __init__(self, name: str, target: str) -> None:
        super().__init__(name, f"Deprecated alias of {target}.")
        self.__target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(self.__target), name)

    def __dir__(self) -> list[str]:
        return dir(importlib.import_module(self.__target))


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import old.module`` work, with a warning, for modules that moved.

    Installed once by ``thawkit/__init__.py`` for its table of moved modules; the target is
    imported only when the old path is.
    """

    def __init__(self, moves: Mapping[str, str]) -> None:
        self.moves = dict(moves)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.moves:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        target = self.moves[spec.name]
        # stacklevel: this frame, then the import system's frames, up to the importing line
        warnings.warn(f"module {spec.name} has moved to {target}: import it from there ({spec.name} "
                      "is a deprecated alias, kept for at least one minor release; see CHANGELOG.md)",
                      DeprecationWarning, stacklevel=2)
        importlib.import_module(target)  # fails here, naming the target, if it cannot load
        return _MovedModule(spec.name, target)

    def exec_module(self, module: types.ModuleType) -> None:
        return None

    def install(self) -> None:
        if not any(isinstance(f, MovedModules) and f.moves == self.moves for f in sys.meta_path):
            sys.meta_path.append(self)
