"""A plugin's mistakes are contained: each failure case of issue 11, reproduced and held fixed.

1. a collector hook that raises halfway leaves nothing of the plugin registered;
2. an exception inside a strategy (or any hook) is a ``PluginError`` naming the plugin, its
   entry point and distribution, the strategy or hook, and chaining the original; the CLI
   prints one line and exits 2 (``--debug`` adds the traceback);
3. a phase that leaves the head out is refused, never a silently frozen head;
4. an unknown name in ``THAWKIT_PLUGINS`` warns with the closest names, and ``thawkit plugins``
   says which installed plugins it hides;
5. the warning about a failed plugin points at the plugin's file and line and names its entry
   point as ``name = value``;
6. a name clash through ``thawkit.register()`` is an error at once, and the shared manager
   stays usable.
"""
from __future__ import annotations

import warnings

import pytest
import yaml
from torch import nn

import thawkit
from thawkit.plugins.cli import main
from thawkit.plugin_manager import PluginLoadWarning


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


# ------------------------------------------------------ 1. transactional registration
HALFWAY = """\
import thawkit


class FirstHalf(thawkit.Strategy):
    name = "first-half"

    def phases(self, layout, model):
        return [thawkit.Phase(0, layout.head.params)]


@thawkit.hookimpl
def thawkit_register_strategies(register):
    register(FirstHalf)
    raise RuntimeError("the second half is unreachable")


@thawkit.hookimpl
def thawkit_data_config(model, spec):
    return thawkit.DataConfig(input_size=(3, 9, 9), origin="halfway")
"""


def test_collector_hook_raising_halfway_leaves_nothing_registered(make_dist):
    make_dist("thawkit-halfway", "0.1", {"halfway": "thawkit_halfway"}, {"thawkit_halfway": HALFWAY})
    pm = thawkit.get_plugin_manager()
    assert thawkit.data_config(_mlp(), pm=pm).origin == "halfway"  # loaded, not yet validated
    with pytest.warns(PluginLoadWarning, match="'halfway'.*second half is unreachable.*not loaded"):
        names = pm.strategies.names()
    assert "first-half" not in names and "gradual" in names
    assert pm.get_plugin("halfway") is None and "halfway" in pm.load_errors
    assert thawkit.data_config(_mlp(), pm=pm).origin != "halfway"  # none of its hooks stays


def test_runtime_plugin_raising_halfway_is_an_error_and_leaves_nothing(pm, tmp_path):
    path = tmp_path / "halfway_plugin.py"
    path.write_text(HALFWAY)
    with pytest.raises(thawkit.PluginError, match="thawkit_register_strategies.*second half"):
        pm.load_local(str(path))
    assert pm.get_plugin(str(path)) is None
    assert "first-half" not in pm.strategies
    assert thawkit.data_config(_mlp(), pm=pm).origin != "halfway"


# ------------------------------------------- 2. exceptions inside a plugin's code
EXTRAS = """\
import pydantic
import thawkit


class Broken(thawkit.Strategy):
    name = "broken-strategy"
    description = "looks a block up by a name no layout has"

    def phases(self, layout, model):
        blocks = {b.name: b for b in layout.all_blocks}
        return [thawkit.Phase(0, blocks["no_such_block"].params)]


class PickyParams(thawkit.StrategyParams):
    level: int = 1

    @pydantic.field_validator("level")
    @classmethod
    def _check(cls, value):
        return {1: value}[value]  # a KeyError, which pydantic does not turn into a ValidationError


class Picky(thawkit.Strategy):
    name = "picky"
    Params = PickyParams

    def phases(self, layout, model):
        return [thawkit.Phase(0, layout.head.params)]


class Sloppy(thawkit.Strategy):
    name = "sloppy"

    def phases(self, layout, model):
        return [thawkit.Phase(0, layout.head.params)]

    def group_of(self, param):
        return {}[param]

    def describe(self, model):
        raise ValueError("no description")


@thawkit.hookimpl
def thawkit_register_strategies(register):
    register(Broken)
    register(Picky)
    register(Sloppy)


@thawkit.hookimpl
def thawkit_no_weight_decay(model):
    return model.no_such_attribute
"""


@pytest.fixture
def extras(make_dist):
    return make_dist("thawkit-extras", "1.0", {"extras": "thawkit_extras"}, {"thawkit_extras": EXTRAS})


def test_exception_in_phases_is_a_plugin_error_naming_plugin_and_strategy(extras):
    pm = thawkit.get_plugin_manager()
    with pytest.raises(thawkit.PluginError) as info:
        thawkit.adapt(_mlp(), "broken-strategy", pm=pm)
    message = str(info.value)
    for part in ("plugin 'extras'", "entry point 'extras = thawkit_extras'",
                 "distribution thawkit-extras 1.0", "strategy 'broken-strategy'", "phases()",
                 "KeyError", "no_such_block"):
        assert part in message, (part, message)
    assert isinstance(info.value.__cause__, KeyError)


def test_exception_in_params_validation_or_a_hook_is_a_plugin_error(extras):
    pm = thawkit.get_plugin_manager()
    with pytest.raises(thawkit.PluginError, match="'extras'.*strategy 'picky'.*KeyError: 2"):
        thawkit.adapt(_mlp(), "picky", level=2, pm=pm)
    adapted = thawkit.adapt(_mlp(), "picky", pm=pm)
    with pytest.raises(thawkit.PluginError, match="'extras'.*thawkit_no_weight_decay.*AttributeError"):
        adapted.optimizer("sgd")


def test_exception_in_a_strategys_optional_methods_is_a_plugin_error(extras):
    adapted = thawkit.adapt(_mlp(), "sloppy", pm=thawkit.get_plugin_manager())
    with pytest.raises(thawkit.PluginError, match="'extras'.*strategy 'sloppy'.*group_of.*KeyError"):
        adapted.optimizer("sgd")
    with pytest.raises(thawkit.PluginError, match="'extras'.*strategy 'sloppy'.*describe.*no description"):
        _ = adapted.plan


def test_cli_reports_a_strategy_failure_in_one_line_and_exit_2(extras, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"backbone": {"source": "torchvision", "name": "resnet18"},
                                      "head": {"num_classes": 3},
                                      "strategy": {"name": "broken-strategy"}}))
    assert main(["plan", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("thawkit plan: error: plugin 'extras'") and "no_such_block" in err
    assert main(["--debug", "plan", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and 'blocks["no_such_block"]' in err  # the plugin's own line


# ------------------------------------------------------------ 3. the head contract
class LastBlockWithoutHead(thawkit.Strategy):
    name = "no-head"
    description = "forgets the head"

    def phases(self, layout, model):
        return [thawkit.Phase(0, layout.params_of(layout.blocks[-1:]))]


class Registers:
    def __init__(self, *classes):
        self.classes = classes

    @thawkit.hookimpl
    def thawkit_register_strategies(self, register):
        for cls in self.classes:
            register(cls)


def test_a_phase_without_the_head_is_refused_not_silently_frozen(pm):
    pm.register(Registers(LastBlockWithoutHead), name="forgetful")
    with pytest.raises(thawkit.PluginError) as info:
        thawkit.adapt(_mlp(), "no-head", num_classes=2, pm=pm)
    message = str(info.value)
    assert "plugin 'forgetful'" in message and "strategy 'no-head'" in message
    assert "leaves the head frozen (4.bias, 4.weight)" in message
    assert "every phase must include layout.head.params" in message


# ------------------------------------------------------------ 4. THAWKIT_PLUGINS
@pytest.fixture
def two_dists(make_dist):
    strategy = ("import thawkit\n\n@thawkit.hookimpl\n"
                "def thawkit_no_weight_decay(model):\n    return None\n")
    make_dist("thawkit-alpha", "1.0", {"alpha": "thawkit_alpha_plugin"}, {"thawkit_alpha_plugin": strategy})
    make_dist("thawkit-beta", "1.0", {"beta": "thawkit_beta_plugin"}, {"thawkit_beta_plugin": strategy})


def test_unknown_name_in_thawkit_plugins_warns_with_the_closest(two_dists, monkeypatch):
    monkeypatch.setenv("THAWKIT_PLUGINS", "alpah,beta")
    with pytest.warns(PluginLoadWarning, match="THAWKIT_PLUGINS names 'alpah'.*did you mean 'alpha'"):
        pm = thawkit.get_plugin_manager()
    assert pm.get_plugin("beta") is not None and pm.get_plugin("alpha") is None
    monkeypatch.setenv("THAWKIT_STRICT_PLUGINS", "1")
    with pytest.raises(thawkit.PluginError, match="'alpah'"):
        thawkit.get_plugin_manager()


def test_thawkit_plugins_command_says_what_is_hidden(two_dists, monkeypatch, capsys):
    monkeypatch.setenv("THAWKIT_PLUGINS", "")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no third-party plugins loaded")
    assert "2 installed plugins are hidden by THAWKIT_PLUGINS=''" in out and "alpha, beta" in out
    monkeypatch.setenv("THAWKIT_PLUGINS", "beta")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "beta" in out and "1 installed plugin is hidden by THAWKIT_PLUGINS='beta': alpha" in out


# ------------------------------------------------ 5. the warning points at the plugin
def test_plugin_warning_points_at_the_plugin_and_names_its_entry_point(make_dist):
    make_dist("thawkit-extras", "1.0", {"extras": "thawkit_extras"},
              {"thawkit_extras": "import thawkit\n\nraise ImportError('needs the missing package foo')\n"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thawkit.get_plugin_manager()
    [warning] = [w for w in caught if issubclass(w.category, PluginLoadWarning)]
    assert warning.filename.endswith("thawkit_extras.py") and warning.lineno == 3
    message = str(warning.message)
    assert "plugin 'extras' (entry point 'extras = thawkit_extras' of distribution thawkit-extras 1.0)" \
        in message
    assert "needs the missing package foo" in message


def test_warning_for_a_failing_hook_points_at_the_line_that_raised(make_dist):
    site = make_dist("thawkit-halfway", "0.1", {"halfway": "thawkit_halfway"},
                     {"thawkit_halfway": HALFWAY})
    pm = thawkit.get_plugin_manager()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm.strategies.names()
    [warning] = [w for w in caught if issubclass(w.category, PluginLoadWarning)]
    assert warning.filename == str(site / "thawkit_halfway.py")
    assert warning.lineno == HALFWAY.splitlines().index(
        '    raise RuntimeError("the second half is unreachable")') + 1


# ------------------------------------------------- 6. conflicts at registration time
class HeadOnlyAgain(thawkit.Strategy):
    name = "head-only"
    description = "a second head-only"

    def phases(self, layout, model):
        return [thawkit.Phase(0, layout.head.params)]


def test_register_conflict_is_reported_at_once_and_the_shared_manager_stays_usable(clean_env):
    with pytest.raises(thawkit.PluginError, match="'head-only'.*'thawkit.strategy.head_only'.*'clash'"):
        thawkit.register(Registers(HeadOnlyAgain), name="clash")
    shared = thawkit.default_plugin_manager()
    assert shared.get_plugin("clash") is None
    assert shared.strategies.get("head-only") is not HeadOnlyAgain
    assert "head-only" in thawkit.list_strategies()
    thawkit.adapt(_mlp(), "head-only")
    thawkit.register(Registers(LastBlockWithoutHead), name="fine")  # the next registration works
    assert "no-head" in thawkit.list_strategies()


def test_register_conflict_between_runtime_plugins_names_both(pm):
    pm.register(Registers(LastBlockWithoutHead), name="first-plugin")
    with pytest.raises(thawkit.PluginError, match="'no-head'") as info:
        pm.register(Registers(LastBlockWithoutHead), name="second-plugin")
    assert "'first-plugin'" in str(info.value) and "'second-plugin'" in str(info.value)
    assert pm.get_plugin("second-plugin") is None and "no-head" in pm.strategies


def test_conflicting_entry_point_is_unloaded_with_a_warning_naming_both(make_dist, monkeypatch):
    source = ("import thawkit\n\nclass S(thawkit.Strategy):\n    name = 'shared-name'\n\n"
              "    def phases(self, layout, model):\n"
              "        return [thawkit.Phase(0, layout.head.params)]\n\n"
              "@thawkit.hookimpl\ndef thawkit_register_strategies(register):\n    register(S)\n")
    make_dist("thawkit-one", "1.0", {"one": "thawkit_one_plugin"}, {"thawkit_one_plugin": source})
    make_dist("thawkit-two", "2.0", {"two": "thawkit_two_plugin"}, {"thawkit_two_plugin": source})
    pm = thawkit.get_plugin_manager()
    with pytest.warns(PluginLoadWarning, match="'shared-name'.*('one'.*'two'|'two'.*'one')"):
        assert "shared-name" in pm.strategies
    loaded = {pm.get_plugin("one") is not None, pm.get_plugin("two") is not None}
    assert loaded == {True, False}  # the one registered later is unloaded
    monkeypatch.setenv("THAWKIT_STRICT_PLUGINS", "1")
    with pytest.raises(thawkit.PluginError, match="'shared-name'"):
        thawkit.get_plugin_manager().strategies.names()



SLOPPY = """\
import pydantic
import thawkit
from torch import nn


class Sloppy:
    def load(self, name, options):
        return nn.Linear(2, 2)

    def list_models(self, pattern=None):
        return sorted(self.catalogue)  # no such attribute


class Labels(pydantic.BaseModel):
    def resolve(self, pm, where):
        raise LookupError("no label service")


@thawkit.hookimpl
def thawkit_register_sources(register):
    register("sloppy", Sloppy())


@thawkit.hookimpl
def thawkit_recipe_sections(register):
    register("labels", Labels)
"""


def test_source_and_recipe_section_code_is_guarded_too(tmp_path, capsys):
    plugin = tmp_path / "sloppy_plugin.py"
    plugin.write_text(SLOPPY)
    assert main(["-p", str(plugin), "models", "--source", "sloppy"]) == 2
    err = capsys.readouterr().err
    assert f"plugin '{plugin}' failed in source 'sloppy': list_models(): AttributeError" in err
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"backbone": {"source": "torchvision", "name": "resnet18"},
                                      "strategy": {"name": "head-only"}, "plugins": [str(plugin)]}))
    assert main(["plan", str(recipe)]) == 2
    assert "recipe section 'labels': resolve(): LookupError: no label service" in capsys.readouterr().err


BAD_COMMANDS = """\
import thawkit


@thawkit.hookimpl
def thawkit_register_commands(subparsers):
    raise RuntimeError("argparse is hard")
"""


def test_a_plugin_failing_to_add_commands_loses_only_its_commands(make_dist, capsys):
    make_dist("thawkit-cmds", "0.1", {"cmds": "thawkit_cmds"}, {"thawkit_cmds": BAD_COMMANDS})
    with pytest.warns(PluginLoadWarning, match="'cmds'.*thawkit_register_commands.*argparse is hard"):
        assert main(["optimizers"]) == 0
    assert "adamw" in capsys.readouterr().out


class AddsBrokenSpecs:
    @thawkit.hookimpl
    def thawkit_add_hookspecs(self, pm):
        raise ImportError("my_hookspecs is missing")


def test_a_failing_add_hookspecs_leaves_nothing_registered(pm):
    with pytest.raises(thawkit.PluginError, match="'broken-specs' failed to register: ImportError"):
        pm.add_plugin(AddsBrokenSpecs(), name="broken-specs")
    assert pm.get_plugin("broken-specs") is None
    assert sorted(i.plugin_name for i in pm.hook.thawkit_add_hookspecs.get_hookimpls()) == [
        "thawkit.cli", "thawkit.train"]


def test_a_phase_given_one_string_is_refused():
    with pytest.raises(TypeError, match="takes parameter names, got the string 'fc.weight'"):
        thawkit.Phase(0, "fc.weight")


# ----------------------------------------------------------- command plugins
HALF_COMMANDS = """
import thawkit

@thawkit.hookimpl
def thawkit_register_commands(subparsers):
    subparsers.add_parser("first-half", help="added before the failure")
    raise RuntimeError("second command not ready")
"""

FAILING_HANDLER = """
import thawkit

def boom(args):
    raise ValueError("handler bug")

@thawkit.hookimpl
def thawkit_register_commands(subparsers):
    subparsers.add_parser("boom").set_defaults(func=boom)
"""


def test_a_command_plugin_failing_halfway_leaves_no_command(tmp_path):
    from thawkit.plugins.cli import build_parser

    path = tmp_path / "half_commands.py"
    path.write_text(HALF_COMMANDS)
    pm = thawkit.get_plugin_manager(entrypoints=False)
    module = pm.load_local(str(path))
    # as if installed from a distribution: a warning, and the rest keeps working
    pm._entry_point["half"], pm._dist_of["half"] = "half_commands", ("half-dist", "1.0")
    pm.unregister(module)
    pm.register(module, name="half", validate=False)
    with pytest.warns(PluginLoadWarning, match="entry point 'half = half_commands' of distribution "
                                               "half-dist 1.0.*second command not ready"):
        parser = build_parser(pm)
    [sub] = [a for a in parser._actions if a.dest == "command"]
    assert "first-half" not in sub.choices, "nothing of a failed plugin stays"
    assert "strategies" in sub.choices and pm.get_plugin("half") is None
    assert sub.choices["strategies"].get_default("thawkit_plugin") == "thawkit.commands"
    assert sub.choices["train"].get_default("thawkit_plugin") == "thawkit.train"


def test_a_failing_command_handler_is_one_message_naming_the_plugin(tmp_path, capsys):
    path = tmp_path / "boom_plugin.py"
    path.write_text(FAILING_HANDLER)
    assert main(["-p", str(path), "boom"]) == 2
    err = capsys.readouterr().err
    assert err == (f"thawkit boom: error: plugin {str(path)!r} failed in command 'boom': "
                   "ValueError: handler bug\n")
    assert main(["--debug", "-p", str(path), "boom"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and 'raise ValueError("handler bug")' in err
