"""Renamed modules keep their old import paths for a release: each old name still resolves, to the
very object at the new place, with a DeprecationWarning naming that place (issue 21)."""
from __future__ import annotations

import importlib

import pytest

MOVED = [
    ("thawkit.plugins.wise", "thawkit.plugins.interpolation"),
    ("thawkit.plugins.commands", "thawkit.plugins.inspection"),
]


@pytest.mark.parametrize("old, new", MOVED)
def test_an_old_module_path_warns_and_gives_the_new_objects(old, new):
    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    assert old_module.__all__, old
    for name in old_module.__all__:
        with pytest.warns(DeprecationWarning, match=f"{new}.{name}"):
            value = getattr(old_module, name)
        assert value is getattr(new_module, name)


@pytest.mark.parametrize("old, new", MOVED)
def test_an_old_module_path_lists_every_public_name_of_the_new_one(old, new):
    new_module = importlib.import_module(new)
    public = {n for n, v in vars(new_module).items() if not n.startswith("_")
              and getattr(v, "__module__", None) == new}
    public |= {n for n, v in vars(new_module).items() if n.isupper() and isinstance(v, int | str)
               and n != "TYPE_CHECKING"}
    assert public <= set(importlib.import_module(old).__all__)


def test_an_old_module_path_still_refuses_unknown_names():
    module = importlib.import_module("thawkit.plugins.wise")
    with pytest.raises(AttributeError, match="no_such_name"):
        module.no_such_name  # noqa: B018
