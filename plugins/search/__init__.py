"""``thawkit search``: which strategy and which learning rate, chosen from evidence under a budget.

An Optuna study over every built-in strategy that applies to the model (their learning rates on
a log scale, ``layer_decay`` where it applies, their main parameters), picked on a stratified,
seeded hold-out carved from ``data.train``; the pick is then scored on ``data.val``. Trials that
freeze the same prefix share one set of features, computed once for the whole search by
whichever process needs them first and memory-mapped by every other (``DIR/features/``, deleted
when the search finishes); head-only learning rates train as several heads at once. Needs the
``search`` extra (Optuna)::

    from thawkit.plugins.search import search
    result = search(thawkit.load_recipe("recipe.yaml"), output="runs/search", budget="10m")

Modules: ``api`` (:func:`search`), ``engine`` (the study, budget, workers), ``space`` (candidates
and their parameters), ``trial`` (one trial, trial files), ``shared`` (the features shared by
every process of a search), ``holdout``,
``evidence`` and ``logme`` (LogME, Auto-RGN norms), ``report`` (the pick and the files).
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"search": "api", "logme": "logme"}

__all__ = ["logme", "search"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'thawkit.plugins.search' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return __all__
