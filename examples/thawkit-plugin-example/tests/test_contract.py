"""The plugin keeps thawkit's plugin contract: the conformance kit, part by part and as a whole."""
from __future__ import annotations

import pytest
import thawkit
from thawkit.plugins.testing import (ModelCase, check_head_plugin, check_layout_plugin, check_plugin,
                                     check_source, check_strategy, default_models)

import thawkit_plugin_example as plugin
from thawkit_plugin_example import Budget, PocketZoo

POCKET_S = ModelCase("pocket:pocket-s", lambda: PocketZoo().load("pocket-s", {}), (3, 32, 32))
POCKET_M = ModelCase("pocket:pocket-m", lambda: PocketZoo().load("pocket-m", {}), (3, 32, 32))


@pytest.fixture
def pm():
    """thawkit's built-ins and this plugin, registered explicitly (no entry points needed)."""
    pm = thawkit.get_plugin_manager(entrypoints=False)
    pm.add_plugin(plugin, name="pocket")
    return pm


def test_budget_strategy(pm):
    check_strategy(Budget, [POCKET_S, POCKET_M, *default_models()], pm=pm,
                   params=[{}, {"fraction": 1.0}, {"fraction": 0.01, "min_blocks": 1, "norm": "affine"}],
                   bad_params=[{"fraction": 0}, {"fraction": 1.5}, {"min_blocks": -1}, {"min_blocks": 99}])


def test_pocket_source(pm):
    check_source(PocketZoo(), name="pocket", pm=pm)


@pytest.mark.parametrize("model", [POCKET_S, POCKET_M])
def test_layout_and_head(pm, model):
    check_layout_plugin(plugin, model, pm=pm)
    check_head_plugin(plugin, model, pm=pm)


def test_the_whole_plugin():
    check_plugin(plugin, name="pocket")
