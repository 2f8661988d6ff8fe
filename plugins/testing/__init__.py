"""The conformance kit: check a plugin against thawkit's plugin contract from your own tests.

Each function runs one plugin part through the contract stated in ``thawkit.hookspecs`` and
:class:`thawkit.Strategy`, and raises :class:`ContractError` (an ``AssertionError``, so
pytest shows it as a failed test) listing every check that failed, each with what the
plugin did and what the contract requires. ``raises=False`` returns the :class:`Report`
instead. ``thawkit check-plugin NAME_OR_FILE`` runs :func:`check_plugin` from the shell.

Example (a plugin's ``tests/test_contract.py``)::

    from thawkit.plugins.testing import check_plugin, check_strategy

    import my_plugin

    def test_strategy():
        check_strategy(my_plugin.TopFraction, bad_params=[{"fraction": 0}])

    def test_everything_the_plugin_registers():
        check_plugin(my_plugin)

Nothing here imports torch until a check runs.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "check_strategy": "strategy",
    "check_source": "sources",
    "check_layout_plugin": "layouts",
    "check_head_plugin": "layouts",
    "check_optimizer": "optim",
    "check_schedule": "optim",
    "check_recipe_reader": "recipes",
    "check_plugin": "plugin",
    "ModelCase": "models",
    "default_models": "models",
    "ContractError": "report",
    "Finding": "report",
    "Report": "report",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'thawkit.plugins.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return __all__
