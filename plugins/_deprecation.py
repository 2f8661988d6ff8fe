"""What still works for a release, with a :class:`DeprecationWarning` naming the new way: a renamed
module leaves behind a module whose names resolve to the new module's, and a function that takes a
recipe still accepts the ``pm=`` it took before the recipe carried its plugin manager."""
from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thawkit import Recipe, ThawkitPluginManager


def module_alias(old: str, new: str, names: list[str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of the old module ``old``: each of ``names`` comes from ``new``."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(f"{old}.{name} moved to {new}.{name}; import it from {new} "
                      f"({old} will be removed in a later release)", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)

    return __getattr__


def recipe_manager(recipe: Recipe, pm: ThawkitPluginManager | None, where: str) -> ThawkitPluginManager:
    """The plugin manager of ``recipe``, the one source of truth; a ``pm=`` passed as well
    (``where`` names the function) warns that it is deprecated and unused."""
    if pm is not None:
        same = "" if pm is recipe.plugin_manager else \
            " (a manager other than the recipe's was passed, and is not used)"
        warnings.warn(f"{where}(pm=...) is deprecated: a recipe carries its plugin manager "
                      f"(recipe.plugin_manager), and {where} uses it{same}; to use another manager, "
                      "load the recipe with thawkit.load_recipe(path, pm=pm)",
                      DeprecationWarning, stacklevel=3)
    return recipe.plugin_manager
