"""The layering holds: core never imports a plugin, torchvision, timm, yaml or argparse, plugins
import only the public API of the ``thawkit`` package, the training plugin's modules form layers,
and no built-in plugin's modules import each other in a cycle (import-linter contracts in
pyproject.toml).

import-linter reads packages from disk; the repository keeps ``thawkit`` in core/ and
``thawkit.plugins`` in plugins/, so the tests lay them out as installed (a copy in a temp folder).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pyproject.toml"


def installed_layout(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "core", site / "thawkit", ignore=ignore)
    shutil.copytree(ROOT / "plugins", site / "thawkit" / "plugins", ignore=ignore)
    return site


def lint_imports(site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_contracts_are_kept(tmp_path):
    result = lint_imports(installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def test_contracts_list_every_core_module():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    contracts = tomllib.loads(CONFIG.read_text())["tool"]["importlinter"]["contracts"]
    core = {f"thawkit.{p.stem}" for p in (ROOT / "core").glob("*.py") if p.stem != "__init__"}
    [core_contract] = [c for c in contracts if c["name"].startswith("core never imports")]
    [plugin_contract] = [c for c in contracts if c["name"].startswith("plugins import only")]
    assert set(core_contract["source_modules"]) == core, "a core module is missing from the contract"
    assert set(plugin_contract["forbidden_modules"]) == core


@pytest.mark.parametrize("where, line, broken", [
    ("plugins/_private_import.py", "from thawkit.adapted import Adapted\n",
     "plugins import only the public API"),
    ("core/_plugin_import.py", "import thawkit.plugins.torchvision\n",
     "core never imports plugins, torchvision, timm, yaml or argparse"),
    ("core/_torchvision_import.py", "import torchvision\n",
     "core never imports plugins, torchvision, timm, yaml or argparse"),
    ("core/_yaml_import.py", "import yaml\n",
     "core never imports plugins, torchvision, timm, yaml or argparse"),
    ("core/_argparse_import.py", "import argparse\n",
     "core never imports plugins, torchvision, timm, yaml or argparse"),
])
def test_a_broken_layer_fails(tmp_path, where, line, broken):
    """The contracts are not vacuous: one bad import breaks them, and the report names it."""
    site = installed_layout(tmp_path)
    folder, name = where.split("/")
    target = site / "thawkit" / (name if folder == "core" else f"plugins/{name}")
    target.write_text(line)
    if folder == "core":  # the contract lists core modules one by one: list the new one as well
        text = CONFIG.read_text().replace('"thawkit.api",', f'"thawkit.api", "thawkit.{target.stem}",', 1)
        config = tmp_path / "pyproject.toml"
        config.write_text(text)
        env = {**os.environ, "PYTHONPATH": str(site)}
        code = ("import sys; from importlinter.cli import lint_imports; "
                f"sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True))")
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=120)
    else:
        result = lint_imports(site)
    assert result.returncode != 0
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout, result.stdout
    assert target.stem in result.stdout


LAYERS = "the training plugin is layered, front ends over runs over the loop over the run"
CYCLES = "no import cycles between the modules of the built-in plugins"


@pytest.mark.parametrize("module, line, broken", [
    # a cycle hidden in a function: rundir -> session while session -> rundir
    ("rundir", "\n\ndef _back():\n    from .session import prepare\n    return prepare\n", [LAYERS, CYCLES]),
    # the loop's base class imported back from the loop: pipeline -> loop -> pipeline
    ("pipeline", "\nfrom .loop import Trainer\n", [LAYERS, CYCLES]),
    # no cycle, but upward: the schedules (a bottom layer) importing the plots
    ("schedules", "\nfrom .plot import plot_run\n", [LAYERS]),
])
def test_an_import_cycle_or_an_upward_import_in_the_training_plugin_fails(tmp_path, module, line, broken):
    site = installed_layout(tmp_path)
    target = site / "thawkit" / "plugins" / "train" / f"{module}.py"
    target.write_text(target.read_text() + line)
    result = lint_imports(site)
    assert result.returncode != 0
    for name in broken:
        assert f"{name}" in result.stdout, result.stdout
    assert f"{len(broken)} broken" in result.stdout, result.stdout
    assert f".{module} ->" in result.stdout or f"thawkit.plugins.train.{module} ->" in result.stdout, \
        result.stdout
