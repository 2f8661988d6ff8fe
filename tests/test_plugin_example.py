"""examples/thawkit-plugin-example, installed as a user installs it: non-editable, into a target
folder put on PYTHONPATH, then its own tests and thawkit's command line run against that copy.

Built offline from a copy of the example (``--no-build-isolation``, no dependencies), so the
working tree is never written to.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "thawkit-plugin-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the copy of the example, the target folder it is installed into)."""
    root = tmp_path_factory.mktemp("example")
    copy, target = root / "source", root / "target"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns(
        "__pycache__", "*.pyc", "*.egg-info", "build", ".pytest_cache"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "--target", str(target), str(copy)],
        cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return copy, target


def run(args: list[str], target: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("THAWKIT_PLUGINS", "PYTHONPATH")}
    # one thread, as tests/conftest.py sets for this process: tiny models are far faster on it
    environ.update(PYTHONPATH=str(target), OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=300)


def test_example_installs_as_a_package_with_its_entry_point(installed):
    copy, target = installed
    assert (target / "thawkit_plugin_example" / "__init__.py").is_file()
    [info] = target.glob("thawkit_plugin_example-0.1.0.dist-info")
    assert "[thawkit]\npocket = thawkit_plugin_example" in (info / "entry_points.txt").read_text()
    where = run(["-c", "import thawkit_plugin_example as p; print(p.__file__)"], target, copy.parent)
    assert Path(where.stdout.strip()).resolve().is_relative_to(target.resolve()), where.stderr


def test_example_tests_pass_against_the_installed_copy(installed):
    copy, target = installed
    result = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(copy / "tests")], target, copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_cli_lists_and_checks_the_installed_plugin(installed):
    copy, target = installed
    listed = run(["-m", "thawkit", "plugins"], target, copy.parent)
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith("pocket ")]
    assert "0.1.0" in row and "thawkit-plugin-example" in row and "thawkit_register_strategies" in row

    checked = run(["-m", "thawkit", "check-plugin", "pocket"], target, copy.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("checking plugin 'pocket' (entry point 'pocket = "
                                     "thawkit_plugin_example' of distribution thawkit-plugin-example 0.1.0)")
    assert ", 0 failed" in checked.stdout and "strategy 'budget' on pocket:pocket-s" in checked.stdout

    hidden = run(["-m", "thawkit", "plugins"], target, copy.parent, THAWKIT_PLUGINS="pokcet")
    assert "THAWKIT_PLUGINS names 'pokcet'" in hidden.stderr and "did you mean 'pocket'" in hidden.stderr
    assert "1 installed plugin is hidden by THAWKIT_PLUGINS='pokcet': pocket" in hidden.stdout
