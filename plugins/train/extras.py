"""The training plugin's optional dependencies: ``pip install 'thawkit[train]'``.

Core and the other plugins need none of them. ``thawkit demo`` needs scikit-learn (its
digits) and matplotlib (its plots); ``thawkit train`` runs without them, leaving out the
plot (matplotlib) and the progress bar (tqdm).
"""
from __future__ import annotations

import importlib.util

from thawkit import ThawkitError

INSTALL = "pip install 'thawkit[train]'"
DISTRIBUTIONS = {"sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm"}


class MissingExtraError(ThawkitError):
    """A command needs a package of the ``train`` extra that is not installed."""


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def require(module: str, purpose: str) -> None:
    """Raise :class:`MissingExtraError` naming the package and the install command."""
    if not available(module):
        raise MissingExtraError(f"{purpose} needs {DISTRIBUTIONS.get(module, module)}, which is not "
                                f"installed; install the training extra: {INSTALL}")
