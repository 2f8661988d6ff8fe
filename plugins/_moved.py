"""Deprecated module paths that keep working: a renamed module leaves behind a module whose
names resolve, with a :class:`DeprecationWarning` naming the new place, to the new module's."""
from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def module_alias(old: str, new: str, names: list[str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of the old module ``old``: each of ``names`` comes from ``new``."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(f"{old}.{name} moved to {new}.{name}; import it from {new} "
                      f"({old} will be removed in a later release)", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)

    return __getattr__
