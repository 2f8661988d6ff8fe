"""The layering holds: core never imports a plugin, torchvision, timm, yaml or argparse, and plugins
import only the public API of the ``thawkit`` package (import-linter contracts in pyproject.toml).

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
    assert "2 kept, 0 broken" in result.stdout


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
