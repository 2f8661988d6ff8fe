"""What still works for a release, with a :class:`DeprecationWarning` naming the new way: a function
that takes a recipe still accepts the ``pm=`` it took before the recipe carried its plugin manager.
(Moved names use :func:`thawkit.moved_names`.)"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thawkit import Recipe, ThawkitPluginManager


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
