"""The plugin manager: factory, built-ins, runtime registration, entry points and failure handling.

Entry-point plugins come from throwaway distributions (the ``make_dist`` fixture in
conftest.py).
"""
from __future__ import annotations

import json
import warnings

import pytest
from torch import nn

import thawkit
from thawkit.plugins.cli import main
from thawkit.plugin_manager import DEFAULT_PLUGINS, PluginLoadWarning
from thawkit.plugins.inspection import plugin_info
from thawkit.plugins.fallbacks import layout_from_prefixes

STRATEGY_PLUGIN = '''
import thawkit

class {cls}(thawkit.Strategy):
    name = "{strategy}"
    description = "{strategy}: the head trains"

    def phases(self, layout, model):
        return [thawkit.Phase(0, layout.head.params)]

@thawkit.hookimpl
def thawkit_register_strategies(register):
    register({cls})
'''


def strategy_plugin(strategy: str) -> str:
    return STRATEGY_PLUGIN.format(cls=strategy.title().replace("-", ""), strategy=strategy)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _third_party(pm) -> set[str]:
    return {row["name"] for row in plugin_info(pm)}


class EveryOtherBlock(thawkit.Strategy):
    name = "every-other"
    description = "Every other block from the top, and the head."

    def phases(self, layout, model):
        return [thawkit.Phase(0, layout.params_of(layout.blocks[::-2] + [layout.head]))]


class Registers:
    """A plugin object that registers the given strategy classes."""

    def __init__(self, *classes: type[thawkit.Strategy], replace: bool = False):
        self.classes, self.replace = classes, replace

    @thawkit.hookimpl
    def thawkit_register_strategies(self, register):
        for cls in self.classes:
            register(cls, replace=self.replace)


class MisspeltHook:
    @thawkit.hookimpl
    def thawkit_register_strategy(self, register):  # the hook is thawkit_register_strategies
        pass


# --------------------------------------------------------------------- factory
def test_factory_builds_independent_managers():
    first = thawkit.get_plugin_manager(entrypoints=False)
    second = thawkit.get_plugin_manager(entrypoints=False)
    assert first is not second
    first.register(Registers(EveryOtherBlock), name="every-other")
    assert "every-other" in first.strategies
    assert "every-other" not in second.strategies


def test_builtins_are_ordinary_named_plugins(pm):
    builtins = [row for row in plugin_info(pm, include_builtin=True) if row["builtin"]]
    assert len(builtins) == len(DEFAULT_PLUGINS)
    assert {row["distribution"] for row in builtins} == {"thawkit"}
    assert plugin_info(pm) == []  # no third-party plugin in a manager without entry points
    by_name = {row["name"]: row["hooks"] for row in builtins}
    assert by_name["thawkit.strategy.gradual"] == ["thawkit_register_strategies"]
    assert pm.strategies.entries["gradual"].plugin == "thawkit.strategy.gradual"


def test_third_party_decision_overrides_a_builtin(pm):
    class Layout:
        @thawkit.hookimpl  # registered after the built-ins, so asked before them
        def thawkit_describe_layout(self, model, spec):
            return layout_from_prefixes(model, stem=None, blocks=[("body", ["0", "2"])],
                                                head=["4"], classifiers=["4"], source="mine")

    pm.register(Layout(), name="my-layouts")
    assert thawkit.describe_layout(_mlp(), pm=pm).source == "mine"


def test_third_party_layout_overrides_the_torchvision_plugin(pm):
    import torchvision

    class Coarse:
        @thawkit.hookimpl
        def thawkit_describe_layout(self, model, spec):
            if type(model).__name__ == "ResNet":
                return layout_from_prefixes(
                    model, stem=["conv1", "bn1"], blocks=[("early", ["layer1", "layer2"]),
                                                          ("late", ["layer3", "layer4"])],
                    head=["fc"], classifiers=["fc"], source="coarse")

    model = torchvision.models.resnet18()
    assert thawkit.describe_layout(model, pm=pm).source == "torchvision"
    pm.register(Coarse(), name="coarse")
    adapted = thawkit.adapt(model, "last-block", pm=pm)
    assert [b.name for b in adapted.layout.blocks] == ["early", "late"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if n.startswith(("layer3", "layer4", "fc"))}


def test_manager_without_builtins_is_empty():
    pm = thawkit.get_plugin_manager(entrypoints=False, builtins=False)
    assert pm.strategies.names() == [] and pm.list_name_plugin() == []


# ---------------------------------------------------------- runtime registration
def test_runtime_plugin_strategy_is_used_by_name(pm):
    pm.register(Registers(EveryOtherBlock), name="every-other-plugin")
    pm.check()
    assert "every-other" in thawkit.list_strategies(pm=pm)
    adapted = thawkit.adapt(_mlp(), "every-other", num_classes=2, pm=pm)
    trainable = {n for n, p in adapted.model.named_parameters() if p.requires_grad}
    assert trainable == {"2.weight", "2.bias", "4.weight", "4.bias"}
    assert adapted.model[4].out_features == 2
    assert adapted.plan.strategy == "every-other"


def test_public_api_with_a_registered_strategy(pm):
    """adapt() -> .model, .plan (table, JSON), .optimizer(), .on_epoch_start(), state round trip."""
    class TwoStep(thawkit.Strategy):
        name = "two-step"
        description = "Head first, everything from epoch 3."

        def phases(self, layout, model):
            return [thawkit.Phase(0, layout.head.params, "head"),
                    thawkit.Phase(3, layout.params_of(layout.all_blocks), "all")]

    pm.register(Registers(TwoStep), name="two-step")
    adapted = thawkit.adapt(_mlp(), "two-step", num_classes=2, pm=pm)
    optimizer = adapted.optimizer("adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["head"]["lr"] == pytest.approx(1e-3)
    assert groups["head.no_decay"]["weight_decay"] == 0.0
    every = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert every == {id(p) for p in adapted.model.parameters()}  # frozen now, thawed later

    plan = adapted.plan
    assert [p.epoch for p in plan.phases] == [0, 3]
    row = plan.param("0.weight")
    assert (row.block, row.phase, row.trainable, row.weight_decay) == ("stem", 1, False, 0.05)
    assert row.lr == pytest.approx(1e-3 * 0.5 ** 2)
    table = str(plan)
    assert table.splitlines()[0].startswith("strategy two-step")
    assert "e0" in table and "e3" in table and "head" in table
    data = json.loads(plan.to_json())
    names = [n for n, _ in adapted.model.named_parameters()]
    assert [p["name"] for p in data["parameters"]] == names

    assert adapted.on_epoch_start(2) is False and not adapted.model[0].weight.requires_grad
    assert adapted.on_epoch_start(3) is True and adapted.model[0].weight.requires_grad
    state = adapted.state_dict()
    fresh = thawkit.adapt(_mlp(), "two-step", num_classes=2, pm=pm)
    fresh.load_state_dict(state)
    assert (fresh.epoch, fresh.phase) == (3, 1) and fresh.model[0].weight.requires_grad


def test_register_helper_and_reset(clean_env):
    thawkit.register(Registers(EveryOtherBlock), name="every-other-plugin")
    assert "every-other" in thawkit.list_strategies()
    assert thawkit.default_plugin_manager() is thawkit.default_plugin_manager()
    thawkit.adapt(_mlp(), "every-other")  # the shared manager, no pm= needed
    thawkit.reset_plugin_manager()
    assert "every-other" not in thawkit.list_strategies()


def test_duplicate_names_from_two_plugins_name_both(pm):
    pm.register(Registers(EveryOtherBlock), name="first-plugin")
    with pytest.raises(thawkit.PluginError, match="every-other") as info:
        pm.register(Registers(EveryOtherBlock), name="second-plugin")  # reported when registering
    assert "'first-plugin'" in str(info.value) and "'second-plugin'" in str(info.value)
    assert pm.get_plugin("second-plugin") is None and "every-other" in pm.strategies


def test_duplicate_of_a_builtin_is_an_error_unless_replace(pm):
    class Probe(thawkit.Strategy):
        name = "head-only"
        description = "my own linear probe"

        def phases(self, layout, model):
            return [thawkit.Phase(0, layout.head.params)]

    with pytest.raises(thawkit.PluginError, match="thawkit.strategy.head_only.*'clash'"):
        pm.register(Registers(Probe), name="clash")

    override = thawkit.get_plugin_manager(entrypoints=False)

    override.register(Registers(Probe, replace=True), name="override")
    assert override.strategies.get("head-only") is Probe
    assert override.strategies.entries["head-only"].plugin == "override"
    adapted = thawkit.adapt(_mlp(), "head-only", pm=override)
    assert adapted.strategy.description == "my own linear probe"


def test_misspelt_hook_at_runtime_names_plugin_and_hook(pm):
    pm.register(MisspeltHook(), name="typo-plugin")
    with pytest.raises(thawkit.PluginError, match="thawkit_register_strategy"):
        pm.check()


def test_misspelt_hook_in_a_local_file_is_an_error(pm, tmp_path):
    path = tmp_path / "typo_plugin.py"
    path.write_text("import thawkit\n\n"
                    "@thawkit.hookimpl\n"
                    "def thawkit_describe_layuot(model, spec):\n"
                    "    return None\n")
    with pytest.raises(thawkit.PluginError, match="thawkit_describe_layuot"):
        pm.load_local(str(path))


def test_a_local_plugin_file_that_is_not_python_is_one_clear_error(pm, tmp_path):
    path = tmp_path / "notes.txt"  # no .py: importlib has no loader for it
    path.write_text("not a plugin\n")
    with pytest.raises(thawkit.PluginError, match=r"is not a Python file \(\.py\)"):
        pm.load_local(str(path))


def test_failed_register_leaves_the_shared_manager_usable(clean_env):
    with pytest.raises(thawkit.PluginError):
        thawkit.register(MisspeltHook(), name="typo-plugin")
    thawkit.register(Registers(EveryOtherBlock), name="every-other-plugin")
    assert "every-other" in thawkit.list_strategies()


# ------------------------------------------------------------------ entry points
def test_entry_point_plugin_is_discovered(make_dist):
    make_dist("thawkit-demo", "1.2.3", {"demo": "thawkit_demo_plugin"},
              {"thawkit_demo_plugin": strategy_plugin("demo-strategy")})
    pm = thawkit.get_plugin_manager()
    assert "demo-strategy" in pm.strategies
    assert pm.strategies.entries["demo-strategy"].plugin == "demo"
    [row] = [r for r in plugin_info(pm) if r["name"] == "demo"]
    assert row == {"name": "demo", "version": "1.2.3", "distribution": "thawkit-demo",
                   "builtin": False, "hooks": ["thawkit_register_strategies"]}
    adapted = thawkit.adapt(_mlp(), "demo-strategy", pm=pm)
    assert adapted.strategy.name == "demo-strategy"


def test_entry_point_plugin_is_used_by_the_shared_manager_and_cli(make_dist, capsys):
    make_dist("thawkit-demo", "1.2.3", {"demo": "thawkit_demo_plugin"},
              {"thawkit_demo_plugin": strategy_plugin("demo-strategy")})
    assert "demo-strategy" in thawkit.list_strategies()
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "1.2.3" in out and "thawkit_register_strategies" in out


def test_broken_plugin_warns_once_and_the_rest_works(make_dist):
    make_dist("thawkit-mixed", "0.1",
              {"good": "thawkit_good_plugin", "broken": "thawkit_broken_plugin"},
              {"thawkit_good_plugin": strategy_plugin("good-strategy"),
               "thawkit_broken_plugin": "raise ImportError('needs the missing package foo')\n"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = thawkit.get_plugin_manager()
        names = pm.strategies.names()
    ours = [w for w in caught if issubclass(w.category, PluginLoadWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    message = str(ours[0].message)
    assert "'broken'" in message and "needs the missing package foo" in message
    assert "good-strategy" in names and "gradual" in names
    assert "broken" in pm.load_errors and pm.get_plugin("broken") is None
    thawkit.adapt(_mlp(), "good-strategy", pm=pm)


def test_broken_plugin_is_an_error_under_strict_mode(make_dist, monkeypatch):
    make_dist("thawkit-broken", "0.1", {"broken": "thawkit_broken_plugin"},
              {"thawkit_broken_plugin": "raise ImportError('needs the missing package foo')\n"})
    monkeypatch.setenv("THAWKIT_STRICT_PLUGINS", "1")
    with pytest.raises(thawkit.PluginError, match="'broken'.*needs the missing package foo"):
        thawkit.get_plugin_manager()


RAISING_PLUGIN = """
import thawkit

@thawkit.hookimpl
def thawkit_register_strategies(register):
    raise RuntimeError("registry service unreachable")
"""


def test_plugin_failing_to_register_warns_and_the_rest_works(make_dist, monkeypatch):
    make_dist("thawkit-flaky", "0.1", {"flaky": "thawkit_flaky_plugin"},
              {"thawkit_flaky_plugin": RAISING_PLUGIN})
    pm = thawkit.get_plugin_manager()
    with pytest.warns(PluginLoadWarning, match="'flaky'.*registry service unreachable"):
        names = pm.strategies.names()
    assert "gradual" in names
    monkeypatch.setenv("THAWKIT_STRICT_PLUGINS", "1")
    with pytest.raises(thawkit.PluginError, match="'flaky'.*registry service unreachable"):
        thawkit.get_plugin_manager().strategies.names()


TYPO_PLUGIN = """
import thawkit

@thawkit.hookimpl
def thawkit_register_strategy(register):
    pass
"""


def test_misspelt_hook_in_an_entry_point_is_reported_and_dropped(make_dist, monkeypatch):
    make_dist("thawkit-typo", "0.1", {"typo": "thawkit_typo_plugin"},
              {"thawkit_typo_plugin": TYPO_PLUGIN})
    with pytest.warns(PluginLoadWarning, match="'typo'.*thawkit_register_strategy"):
        pm = thawkit.get_plugin_manager()
    assert pm.get_plugin("typo") is None and "typo" in pm.load_errors
    assert "gradual" in pm.strategies
    monkeypatch.setenv("THAWKIT_STRICT_PLUGINS", "1")
    with pytest.raises(thawkit.PluginError, match="thawkit_register_strategy"):
        thawkit.get_plugin_manager()


@pytest.fixture
def three_dists(make_dist):
    make_dist("thawkit-alpha", "1.0", {"alpha": "thawkit_alpha_plugin"},
              {"thawkit_alpha_plugin": strategy_plugin("alpha-strategy")})
    make_dist("thawkit-beta", "1.0", {"beta": "thawkit_beta_plugin"},
              {"thawkit_beta_plugin": strategy_plugin("beta-strategy")})
    make_dist("thawkit-gamma", "1.0", {"gamma": "thawkit_gamma_plugin"},
              {"thawkit_gamma_plugin": strategy_plugin("gamma-strategy")})


@pytest.mark.parametrize("setting, loaded", [
    (None, {"alpha", "beta", "gamma"}),
    ("", set()),
    ("  ", set()),
    ("beta", {"beta"}),
    ("alpha, gamma", {"alpha", "gamma"}),
    ("thawkit-beta", {"beta"}),  # a distribution name selects its entry points
])
def test_thawkit_plugins_selects_what_autoloads(three_dists, monkeypatch, setting, loaded):
    if setting is not None:
        monkeypatch.setenv("THAWKIT_PLUGINS", setting)
    pm = thawkit.get_plugin_manager()
    ours = _third_party(pm) & {"alpha", "beta", "gamma"}
    assert ours == loaded
    assert {f"{n}-strategy" for n in loaded} <= set(pm.strategies.names())
    assert "gradual" in pm.strategies  # built-ins load whatever the setting


def test_entrypoints_false_overrides_the_environment(three_dists):
    assert _third_party(thawkit.get_plugin_manager(entrypoints=False)) == set()


def test_blocked_plugin_is_not_loaded(three_dists):
    pm = thawkit.get_plugin_manager(entrypoints=False)
    pm.set_blocked("beta")
    pm.load_entrypoints()
    assert pm.get_plugin("alpha") is not None and pm.get_plugin("beta") is None
    assert "alpha-strategy" in pm.strategies and "beta-strategy" not in pm.strategies


def test_blocked_plugin_is_not_listed(three_dists):
    pm = thawkit.get_plugin_manager(entrypoints=False)
    pm.set_blocked("beta")
    pm.load_entrypoints()
    assert "beta" not in _third_party(pm)
