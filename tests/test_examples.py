"""The examples run, the example recipes plan, and the README shows them exactly as they are.

README blocks are tied to reality by a marker on the line before them:

* ``<!-- file: examples/x.py -->``: the block is the whole file;
* ``<!-- file: examples/x.py#hook -->``: the block is the ``# [hook]`` ... ``# [end]`` region;
* ``<!-- output: thawkit plan ... -->``: the block is ``$ command`` and what it prints.

A README example that drifts from its file, or an output that drifts from what the
command prints, fails here.
"""
from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import thawkit
from thawkit.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
MARKED = re.compile(r"^<!-- (file|output): (.+?) -->\n```\w*\n(.*?)^```\n", re.S | re.M)
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))
RECIPES = sorted(p.name for p in (EXAMPLES / "recipes").glob("*.yaml"))


def readme() -> str:
    return README.read_text()


def marked_blocks() -> list[tuple[str, str, str]]:
    return [(m[1], m[2], m[3]) for m in MARKED.finditer(readme())]


def region(path: Path, name: str) -> str:
    pattern = rf"^# \[{re.escape(name)}\]\n(.*?)^# \[end\]\n"
    match = re.search(pattern, path.read_text(), re.S | re.M)
    assert match, f"{path.relative_to(ROOT)} has no '# [{name}]' ... '# [end]' region"
    return match.group(1)


@functools.cache
def run_script(name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "THAWKIT_PLUGINS": ""}
    return subprocess.run([sys.executable, f"examples/{name}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def in_root(monkeypatch, capsys):
    """``main(argv)`` run from the repository root; returns (exit code, stdout + stderr)."""
    monkeypatch.chdir(ROOT)

    def call(argv: list[str]) -> tuple[int, str]:
        thawkit.reset_plugin_manager()
        try:
            code = main(argv)
        finally:
            thawkit.reset_plugin_manager()
        out = capsys.readouterr()
        return code, out.out + out.err

    return call


# ------------------------------------------------------------------ examples
@pytest.mark.parametrize("name", SCRIPTS)
def test_example_script_runs(name):
    result = run_script(name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip(), f"examples/{name} printed nothing"


def missing_inputs(recipe: thawkit.Recipe) -> list[str]:
    """Local files a recipe must find before it can plan: weights, and data to count classes."""
    needed = []
    weights = recipe.backbone.weights
    if weights and weights.endswith((".pth", ".pt", ".bin", ".ckpt", ".safetensors")):
        needed.append(weights)
    if recipe.head.num_classes is None and recipe.data.train:
        needed.append(recipe.data.train)
    return [path for path in needed if not (ROOT / path).exists()]


def load_example_recipe(name: str) -> thawkit.Recipe:
    pm = thawkit.get_plugin_manager(entrypoints=False)
    return thawkit.load_recipe(EXAMPLES / "recipes" / name, pm=pm)


@pytest.mark.parametrize("name", RECIPES)
def test_example_recipe_validates(name):
    """Every field, name and strategy parameter checks out, even where planning needs data."""
    assert load_example_recipe(name).strategy.name


@pytest.mark.parametrize("name", RECIPES)
def test_example_recipe_plans(name, in_root):
    missing = missing_inputs(load_example_recipe(name))
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, written by `thawkit demo` or your own data")
    code, out = in_root(["plan", f"examples/recipes/{name}"])
    assert code == 0, out
    assert out.startswith(f"strategy {load_example_recipe(name).strategy.name}")
    assert "\ntotal " in out


def test_custom_strategy_file_is_also_a_cli_plugin(in_root):
    code, out = in_root(["-p", "examples/custom_strategy.py", "strategies"])
    assert code == 0, out
    assert re.search(r"^every-other\s+examples/custom_strategy\.py\s", out, re.M)


def test_tiny_zoo_hooks_are_each_one_region():
    from thawkit.plugins.train import hookspecs as train_hookspecs

    hooks = [n for module in (thawkit.hookspecs, train_hookspecs) for n in dir(module)
             if n.startswith("thawkit_")]
    text = (EXAMPLES / "tiny_zoo.py").read_text()
    assert sorted(re.findall(r"^# \[(thawkit_\w+)\]$", text, re.M)) == sorted(hooks)
    for hook in hooks:
        assert f"def {hook}(" in region(EXAMPLES / "tiny_zoo.py", hook)


# -------------------------------------------------------------------- README
def test_readme_marks_its_examples():
    kinds = {(kind, target.split("#")[0]) for kind, target, _ in marked_blocks()}
    for name in SCRIPTS:
        assert ("file", f"examples/{name}") in kinds, f"README does not show examples/{name}"
    assert ("output", "thawkit strategies") in kinds
    assert ("output", "thawkit plan examples/recipes/resnet18_gradual.yaml") in kinds


def test_readme_python_blocks_are_files_or_signatures():
    """Every ```python block is tied to a file, except one-line hook signatures."""
    text = readme()
    tied = {m.start(3) for m in MARKED.finditer(text)}
    for m in re.finditer(r"^```python\n(.*?)^```\n", text, re.S | re.M):
        body = m.group(1)
        if m.start(1) in tied:
            continue
        assert re.fullmatch(r"def thawkit_\w+\(.*\) -> .+\n", body), f"untied python block:\n{body}"


@pytest.mark.parametrize("kind, target, shown", marked_blocks(),
                         ids=[f"{k}:{t}" for k, t, _ in marked_blocks()])
def test_readme_block_matches_reality(kind, target, shown, in_root):
    if kind == "file":
        path, _, name = target.partition("#")
        actual = region(ROOT / path, name) if name else (ROOT / path).read_text()
        assert shown == actual, f"README block differs from {target}"
        return
    argv = shlex.split(target)
    if argv[0] == "thawkit":
        _, out = in_root(argv[1:])
    else:
        assert argv[:2][0] == "python" and argv[1].startswith("examples/"), target
        result = run_script(argv[1].removeprefix("examples/"))
        out = result.stdout + result.stderr
    assert shown == f"$ {target}\n{out.rstrip()}\n", f"README output of `{target}` is stale"


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    [command] = re.findall(r'^TEST_COMMAND="(.+)"$', ci, re.M)
    quick = readme().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    first, second = re.findall(r"^```bash\n(.+)\n```$", quick, re.M)
    assert second.endswith(f"&& {command}")
    assert "pip install -e '.[test]'" in second
    assert "pip install torch==2.14.1 torchvision==0.29.1" in first
    main_job = first.rsplit("&& ", 1)[1]
    assert main_job.startswith("thawkit ")
    for arg in shlex.split(main_job):
        if arg.endswith(".yaml"):
            assert (ROOT / arg).is_file(), arg
    assert ci.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in ci


def test_readme_lists_every_command():
    section = readme().split("## Command line", 1)[1].split("\n## ", 1)[0]
    [sub] = [a for a in build_parser()._actions if a.dest == "command"]
    missing = [c for c in sub.choices if f"`thawkit {c}" not in section]
    assert missing == [], f"README's Command line section does not mention {missing}"


def test_readme_keeps_the_sections_others_fill():
    headings = re.findall(r"^## (.+)$", readme(), re.M)
    for heading in ("Quick start", "Pick a strategy by name", "A custom freezing plugin", "Hooks",
                    "Errors", "Command line", "Models", "Training runs and the demo"):
        assert heading in headings, heading
