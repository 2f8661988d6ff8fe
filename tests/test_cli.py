"""The ``thawkit`` command line, run as a user runs it: in a subprocess.

Recipes here use the built-in ``python:MODULE:CALLABLE`` source with a small
model module written to a temporary directory, so no model zoo is needed.
No timings are asserted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import thawkit

THAWKIT = Path(sys.executable).with_name("thawkit")

TOY_MODULE = '''
import torch
from torch import nn


def stage(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout), nn.ReLU())


def build(width=8, num_classes=5):
    return nn.Sequential(stage(3, width), stage(width, width), stage(width, width),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''

RECIPE = {
    "backbone": {"source": "python", "name": "thawkit_cli_toy:build", "kwargs": {"width": 8}},
    "head": {"num_classes": 3},
    "strategy": {"name": "gradual", "every": 2},
    "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.05, "layer_decay": 0.5},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
}


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "thawkit_cli_toy.py").write_text(TOY_MODULE)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    return tmp_path


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        module: bool = False) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "THAWKIT_PLUGINS": "", **(env or {})}
    if cwd is not None:
        paths = [str(cwd), os.environ.get("PYTHONPATH")]
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    script = not module and THAWKIT.exists()
    command = [str(THAWKIT)] if script else [sys.executable, "-m", "thawkit"]
    return subprocess.run([*command, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=300)


def subcommands() -> list[str]:
    from thawkit.plugins.cli import build_parser

    parser = build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]
    return list(sub.choices)


# ----------------------------------------------------------------------- help
def test_help_lists_every_command():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    commands = subcommands()
    assert {"strategies", "plugins", "schema", "plan"} <= set(commands)
    for command in commands:
        assert f"    {command} " in result.stdout or f"    {command}\n" in result.stdout, command


def test_help_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        from thawkit.plugins.cli import main
        for argv in (["--help"], []):
            try:
                main(argv)
            except SystemExit:
                pass
        heavy = sorted(m for m in ("torch", "torchvision", "timm", "numpy") if m in sys.modules)
        print("HEAVY=" + ",".join(heavy))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "THAWKIT_PLUGINS": ""}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: thawkit" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "HEAVY="


def test_python_dash_m_thawkit():
    result = run("--help", module=True)
    assert result.returncode == 0 and "usage: thawkit" in result.stdout
    version = run("--version", module=True)
    assert version.stdout.strip() == f"thawkit {thawkit.__version__}"


# ------------------------------------------------------------------- listings
def test_strategies_lists_name_plugin_description_and_params():
    result = run("strategies")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["strategy", "plugin", "description"]
    rows = {line.split()[0]: line for line in lines[2:] if line and not line.startswith("every ")}
    pm = thawkit.get_plugin_manager(entrypoints=False)
    assert sorted(rows) == pm.strategies.names()
    for name in pm.strategies.names():
        cls = pm.strategies.get(name)
        assert pm.strategies.entries[name].plugin in rows[name]
        assert cls.summary() in rows[name]
    assert "every=1" in rows["gradual"] and "blocks=1" in rows["last-block"]
    assert "norm = frozen (default) | affine | train" in result.stdout


def test_strategies_include_a_plugin_given_with_dash_p(tmp_path):
    plugin = tmp_path / "probe_plugin.py"
    plugin.write_text(textwrap.dedent('''
        import thawkit

        class Probe(thawkit.Strategy):
            name = "probe"
            description = "Linear probe, the plugin way."

            def phases(self, layout, model):
                return [thawkit.Phase(0, layout.head.params)]

        @thawkit.hookimpl
        def thawkit_register_strategies(register):
            register(Probe)
    '''))
    result = run("-p", str(plugin), "strategies")
    assert result.returncode == 0, result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith("probe ")]
    assert str(plugin) in row and "Linear probe, the plugin way." in row


def test_plugins_without_and_with_all():
    bare = run("plugins")
    assert bare.returncode == 0, bare.stderr
    assert "no third-party plugins installed" in bare.stdout
    full = run("plugins", "--all")
    assert full.returncode == 0, full.stderr
    assert full.stdout.splitlines()[0].split() == ["plugin", "version", "distribution", "hooks"]
    rows = {line.split()[0]: line for line in full.stdout.splitlines()[2:]}
    assert "thawkit_register_strategies" in rows["thawkit.strategy.gradual"]
    assert f" {thawkit.__version__} " in rows["thawkit.strategy.gradual"]
    assert "thawkit_describe_layout" in rows["thawkit.fallbacks"]
    assert len(rows) == len(thawkit.DEFAULT_PLUGINS)


def test_schema_is_json_with_a_variant_per_strategy():
    result = run("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    names = thawkit.get_plugin_manager(entrypoints=False).strategies.names()
    assert sorted(schema["properties"]["strategy"]["discriminator"]["mapping"]) == names


# ----------------------------------------------------------------------- plan
def test_plan_prints_the_table(workdir):
    result = run("plan", "recipe.yaml", cwd=workdir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("strategy gradual (every=2")
    assert "layer_decay=0.5" in lines[0]
    assert lines[1].split() == ["block", "role", "params", "e1", "e3", "e5", "e7",
                                "lr", "wd", "norm"]
    blocks = [line.split()[0] for line in lines[3:-1]]
    assert blocks == ["stem", "1", "2", "head", "total"]
    assert lines[-1].startswith("cache off for epochs 1-")  # the feature cache: augmentation is on
    head = lines[3 + blocks.index("head")].split()
    assert head[3:8] == ["all"] * 4 + ["1.00e-03"]


def test_plan_json_and_set(workdir):
    result = run("plan", "recipe.yaml", "--json", "--set", "strategy={name: last-block, blocks: 1}",
                 "--set", "optimizer.lr=0.01", cwd=workdir)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["strategy"] == "last-block" and plan["optimizer"]["lr"] == 0.01
    trainable = {p["name"] for p in plan["parameters"] if p["trainable"]}
    assert trainable == {"2.0.weight", "2.0.bias", "2.1.weight", "2.1.bias", "5.weight", "5.bias"}
    assert plan["total_params"] == sum(p["numel"] for p in plan["parameters"])


# ------------------------------------------------------------------ bad input
BAD_INPUTS = {
    "unknown strategy": (["--set", "strategy.name=gradul"],
                         "strategy.name: unknown strategy 'gradul'; did you mean 'gradual'?"),
    "unknown optimizer": (["--set", "optimizer.name=adamww"],
                          "optimizer.name: unknown optimizer 'adamww'; did you mean 'adamw'"),
    "unknown source": (["--set", "backbone.source=pyhton"],
                       "backbone.source: unknown source 'pyhton'; did you mean 'python'?"),
    "unknown schedule": (["--set", "schedule.name=cosin"],
                         "schedule.name: unknown schedule 'cosin'; did you mean 'cosine'?"),
    "misspelt field": (["--set", "head.num_clases=3"],
                       "head.num_clases: unknown field; allowed fields: num_classes, dropout, "
                       "keep_aux"),
    "misspelt section": (["--set", "optimiser.lr=0.1"],
                         "optimiser: unknown field; allowed fields: backbone, head, strategy"),
    "strategy parameter": (["--set", "strategy.every=0"],
                           "strategy.every: Input should be greater than or equal to 1"),
    "optimizer argument": (["--set", "optimizer.momentun=0.9"],
                           "optimizer.momentun: not a field of the optimizer section nor a parameter of "
                           "optimizer 'adamw'; allowed: "),
    "bad --set": (["--set", "optimizer.lr"], "--set 'optimizer.lr': expected key.path=value"),
}


@pytest.fixture
def in_process(workdir, monkeypatch, capsys):
    """``main(argv)`` in this process, as the console script calls it, in ``workdir``."""
    from thawkit.plugins.cli import main

    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(workdir))

    def call(*args: str) -> subprocess.CompletedProcess:
        thawkit.reset_plugin_manager()
        try:
            code = main(list(args))
        finally:
            thawkit.reset_plugin_manager()
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)

    return call


def assert_one_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.count("error:") == 1, result.stderr
    assert result.stderr.startswith("thawkit plan: error: ")
    assert expected in result.stderr


def test_bad_input_from_the_console_script(workdir):
    result = run("plan", "recipe.yaml", "--set", "strategy.name=gradul", cwd=workdir)
    assert_one_error(result, "strategy.name: unknown strategy 'gradul'; did you mean 'gradual'?")
    names = thawkit.get_plugin_manager(entrypoints=False).strategies.names()
    assert result.stderr.strip().splitlines()[-1].endswith(f": {', '.join(names)}")


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_recipe_input_is_one_message_and_exit_2(in_process, case):
    args, expected = BAD_INPUTS[case]
    assert_one_error(in_process("plan", "recipe.yaml", *args), expected)


def test_yaml_that_does_not_parse_names_file_line_and_column(workdir, in_process):
    (workdir / "broken.yaml").write_text("backbone: {source: python, name: x\n"
                                         "strategy: {name: full}\n")
    assert_one_error(in_process("plan", "broken.yaml"), "broken.yaml:2:9: YAML does not parse")


def test_json_that_does_not_parse_names_file_line_and_column(workdir, in_process):
    (workdir / "broken.json").write_text('{"backbone": {"source": "python"}\n "strategy": {}}\n')
    assert_one_error(in_process("plan", "broken.json"), "broken.json:2:2: invalid JSON")


def test_missing_recipe_file(in_process):
    assert_one_error(in_process("plan", "nope.yaml"), "recipe file 'nope.yaml' does not exist")


def test_broken_plugin_file_is_one_message(workdir, in_process):
    (workdir / "broken_plugin.py").write_text("import not_a_module_anywhere\n")
    result = in_process("-p", "broken_plugin.py", "plan", "recipe.yaml")
    assert_one_error(result, "plugin 'broken_plugin.py' failed to import: ModuleNotFoundError")


def test_unknown_command_is_exit_2_without_traceback():
    result = run("trian")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "invalid choice: 'trian'" in result.stderr
