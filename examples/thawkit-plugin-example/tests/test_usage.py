"""The plugin as a user meets it: installed, found through its entry point, used by name."""
from __future__ import annotations

import importlib.metadata

import pytest
import thawkit


@pytest.fixture
def pm(monkeypatch):
    monkeypatch.delenv("THAWKIT_PLUGINS", raising=False)  # load every installed plugin
    return thawkit.get_plugin_manager()


def test_the_entry_point_is_installed():
    [ep] = importlib.metadata.entry_points(group="thawkit", name="pocket")
    assert ep.value == "thawkit_plugin_example" and ep.dist.metadata["Name"] == "thawkit-plugin-example"


def test_budget_on_a_pocket_model(pm):
    model = thawkit.load_backbone("pocket:pocket-m", pm=pm)
    adapted = thawkit.adapt(model, "budget", num_classes=5, fraction=0.3, pm=pm)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable <= 0.3 * total
    assert adapted.plan.phases[0].label.startswith("head+neck")
    assert thawkit.data_config(model, pm=pm).input_size == (3, 32, 32)


def test_mistakes_are_reported_by_field(pm):
    with pytest.raises(thawkit.ConfigError, match="strategy.fraction"):
        thawkit.adapt(thawkit.load_backbone("pocket:pocket-s", pm=pm), "budget", fraction=2, pm=pm)
    with pytest.raises(thawkit.UnknownNameError, match="did you mean 'pocket-s'"):
        thawkit.load_backbone("pocket:pocket-z", pm=pm)
