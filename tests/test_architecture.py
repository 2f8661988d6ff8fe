"""The architecture's promises: one validation and one build of the groups per run, no hidden
global state (a recipe never changes the shared manager, local plugin files never collide), and
the training loop as an ordinary plugin that core does not know."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
import thawkit
from thawkit.plugins.cli import main

STRATEGY_FILE = """\
from pydantic import field_validator

import thawkit

CALLS = []


class Params(thawkit.StrategyParams):
    top: int = 1

    @field_validator("top")
    @classmethod
    def _count(cls, value):
        CALLS.append(value)
        return value


class {cls}(thawkit.Strategy):
    name = "{name}"
    Params = Params

    def phases(self, layout, model):
        return [thawkit.Phase(0, layout.params_of(layout.blocks[-self.params.top:] + [layout.head]))]


@thawkit.hookimpl
def thawkit_register_strategies(register):
    register({cls})
"""


def strategy_file(folder: Path, name: str, cls: str = "Counted") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plugin.py"
    path.write_text(STRATEGY_FILE.format(name=name, cls=cls))
    return path


def recipe_file(folder: Path, strategy: str, plugins: list[str], **params: int) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "backbone": {"source": "torchvision", "name": "resnet18"},
        "head": {"num_classes": 3},
        "strategy": {"name": strategy, **params},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "plugins": plugins}))
    return path


def test_a_recipe_is_validated_once_and_its_groups_built_once(tmp_path, monkeypatch):
    import thawkit.adapted

    plugin = strategy_file(tmp_path / "a", "counted")
    recipe = thawkit.load_recipe(recipe_file(tmp_path, "counted", [str(plugin)], top=2))
    module = next(m for n, m in recipe.plugin_manager.list_name_plugin() if n == str(plugin))
    assert module.CALLS == [2], "validated once, when the recipe entered"
    built = []
    real = thawkit.adapted.build_groups
    monkeypatch.setattr(thawkit.adapted, "build_groups", lambda *a, **k: built.append(1) or real(*a, **k))
    adapted = thawkit.adapt_recipe(recipe, meta=True)
    assert adapted.strategy is recipe.strategy.instance, "adapt() takes the validated strategy as is"
    optimizer = adapted.optimizer(recipe.optimizer)
    assert module.CALLS == [2], "adapt_recipe and optimizer() validate nothing again"
    assert len(built) == 1, "the groups are built once, by the optimizer call"
    assert optimizer.defaults["momentum"] == 0.9
    assert adapted.plan.optimizer["groups"], "the plan shows the groups that were built"


def test_library_keyword_arguments_still_validate(tmp_path):
    from builders import resnet

    with pytest.raises(thawkit.ConfigError, match=r"strategy\.blocks: Input should be greater"):
        thawkit.adapt(resnet(), "last-block", num_classes=3, blocks=-1)
    adapted = thawkit.adapt(resnet(), "last-block", num_classes=3, blocks=2)
    with pytest.raises(thawkit.ConfigError, match="strategy 'last-block' is given as an instance"):
        thawkit.adapt(resnet(), adapted.strategy, blocks=1)


def test_optimizer_calls_do_not_inherit_settings(tmp_path):
    """Each optimizer() call is built from its own arguments and the documented defaults."""
    from builders import resnet

    adapted = thawkit.adapt(resnet(), "full", num_classes=3)
    first = adapted.optimizer("sgd", lr=0.1, momentum=0.9, layer_decay=0.5)
    assert len({g["lr"] for g in first.param_groups}) > 1
    second = adapted.optimizer("sgd", lr=0.1)
    assert {g["lr"] for g in second.param_groups} == {0.1}, "layer decay of the first call is gone"
    assert second.defaults["momentum"] == 0
    adamw = adapted.optimizer("adamw", lr=1e-3)  # no momentum carried over from an SGD call
    assert adamw.defaults["weight_decay"] == 0.01
    assert adapted.plan.optimizer["name"] == "adamw"


def test_a_recipe_with_plugins_leaves_the_shared_manager_alone(tmp_path):
    thawkit.reset_plugin_manager()
    shared = thawkit.default_plugin_manager()
    before = [name for name, _ in shared.list_name_plugin()]
    plugin = strategy_file(tmp_path / "p", "only-in-this-recipe")
    recipe = thawkit.load_recipe(recipe_file(tmp_path, "only-in-this-recipe", [str(plugin)]))
    assert recipe.plugin_manager is not shared
    assert "only-in-this-recipe" in recipe.plugin_manager.strategies
    assert "only-in-this-recipe" not in shared.strategies
    assert [name for name, _ in shared.list_name_plugin()] == before
    plain = thawkit.load_recipe(recipe_file(tmp_path / "p", "full", []))
    assert plain.plugin_manager is shared, "a recipe without plugins uses the shared manager"


def test_two_plugin_files_with_the_same_name_do_not_collide(tmp_path, pm):
    one = strategy_file(tmp_path / "one", "from-one", "One")
    two = strategy_file(tmp_path / "two", "from-two", "Two")
    assert one.name == two.name
    first, second = pm.load_local(str(one)), pm.load_local(str(two))
    assert first is not second and first.__name__ != second.__name__
    assert {"from-one", "from-two"} <= set(pm.strategies.names())


def test_core_registers_no_command_of_its_own(capsys):
    """Every command, the built-in ones too, comes from a plugin through thawkit_register_commands."""
    pm = thawkit.get_plugin_manager(entrypoints=False)
    for name in list(thawkit.DEFAULT_PLUGINS):
        if name != "thawkit.fallbacks":
            pm.unregister(name=name)
    from thawkit.plugins.cli import build_parser

    [sub] = [a for a in build_parser(pm)._actions if a.dest == "command"]
    assert list(sub.choices) == []
    assert main(["strategies"]) == 0 and "head-only" in capsys.readouterr().out


def test_core_knows_no_command_line():
    """The command line is the built-in plugin thawkit.cli: core defines no command hook, and a
    manager without that plugin has no thawkit_register_commands hook at all."""
    assert not hasattr(thawkit.hookspecs, "thawkit_register_commands")
    pm = thawkit.get_plugin_manager(entrypoints=False, builtins=False)
    assert not hasattr(pm.hook, "thawkit_register_commands")
    assert thawkit.DEFAULT_PLUGINS["thawkit.cli"] == "thawkit.plugins.cli"
    pm.register_builtin("thawkit.cli", thawkit.DEFAULT_PLUGINS["thawkit.cli"])
    assert pm.hook.thawkit_register_commands.spec is not None


def _private_reaches(source: str) -> list[str]:
    """Places where plugin code reads or writes another object's private attributes: the plugin
    manager's (``pm._x``, ``manager._x``), argparse's subparsers (``._choices_actions``), or
    writes into the manager's ``collectors`` table."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name in ("pm", "manager", "plugin_manager") or node.attr == "_choices_actions":
                found.append(f"line {node.lineno}: {name}.{node.attr}")
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Attribute) \
                        and target.value.attr == "collectors":
                    found.append(f"line {node.lineno}: a write into collectors")
    return found


def test_plugins_pass_nothing_through_private_attributes():
    """Plugins talk to the manager and to each other through public API (``pm.add_collector``,
    ``pm.distribution``, the command line's ``Commands``), as a third-party plugin must."""
    root = Path(thawkit.__file__).parent / "plugins"
    reaches = {str(p.relative_to(root)): found for p in sorted(root.rglob("*.py"))
               if (found := _private_reaches(p.read_text()))}
    assert reaches == {}


@pytest.mark.parametrize("line", ["pm._dist_of.get('x')", "sub._choices_actions[:] = []",
                                  "pm.collectors['thawkit_x'] = ('x', None)"])
def test_a_private_reach_is_found(line):
    assert _private_reaches(line)


def test_a_plugin_adds_a_collector_hook_through_the_manager(pm):
    class Widgets:
        @thawkit.hookimpl
        def thawkit_register_widgets(self, register):
            register("knob", 1)

    class Spec:
        @thawkit.hookspec
        def thawkit_register_widgets(self, register):
            """Register widgets."""

    pm.add_hookspecs(Spec)
    pm.add_collector("thawkit_register_widgets", "widget")
    pm.register(Widgets())
    assert pm.registry("thawkit_register_widgets").get("knob") == 1
    with pytest.raises(thawkit.UnknownNameError, match="unknown widget 'dial'"):
        pm.registry("thawkit_register_widgets").get("dial")
    assert pm.distribution("thawkit.torchvision") == (None, None)
