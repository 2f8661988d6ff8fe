"""Packaging: the wheel holds thawkit/ and thawkit/plugins/, and a plain install imports anywhere.

Built offline from a copy of the source tree (``--no-build-isolation``, no
dependencies), so the working tree is never written to.
"""
from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "core", "plugins")


def pip(*args: str, cwd: Path) -> None:
    offline = ["--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check",
               "-q"]
    result = subprocess.run([sys.executable, "-m", "pip", *args, *offline],
                            cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, copy / name, ignore=ignore)
        else:
            shutil.copy2(path, copy / name)
    return copy


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", "-w", str(out), str(source), cwd=out)
    [built] = out.glob("thawkit-*.whl")
    return zipfile.ZipFile(built)


def test_wheel_contains_every_package(wheel):
    names = wheel.namelist()
    for package in ("thawkit", "thawkit/plugins", "thawkit/plugins/cli", "thawkit/plugins/strategies",
                    "thawkit/plugins/testing", "thawkit/plugins/timm", "thawkit/plugins/torchvision",
                    "thawkit/plugins/train"):
        assert f"{package}/__init__.py" in names, package
    for module in ("hookspecs", "plugin_manager", "recipe", "adapted", "api", "__main__"):
        assert f"thawkit/{module}.py" in names
    assert "thawkit/py.typed" in names, "the wheel must tell type checkers thawkit is typed"
    strategies = {Path(n).stem for n in names if n.startswith("thawkit/plugins/strategies/")}
    assert {"gradual", "head_only", "last_block", "full", "pattern"} <= strategies
    assert not [n for n in names if n.startswith(("core/", "plugins/", "tests/"))]


def test_wheel_metadata(wheel):
    [meta_name] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    meta = email.message_from_bytes(wheel.read(meta_name))
    assert meta["Name"] == "thawkit" and meta["Requires-Python"] == ">=3.10"
    assert "test" in meta.get_all("Provides-Extra")
    [entry_points] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "[console_scripts]" in text and "thawkit = thawkit.plugins.cli:main" in text


def test_plain_install_imports_from_anywhere(source, tmp_path):
    target = tmp_path / "target"
    pip("install", "--target", str(target), str(source), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import thawkit, thawkit.plugins.strategies.gradual, thawkit.hookspecs; "
            "print(thawkit.__file__); print(thawkit.get_plugin_manager(entrypoints=False)"
            ".strategies.names())")
    env = {**os.environ, "PYTHONPATH": str(target), "THAWKIT_PLUGINS": ""}
    result = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    where, strategies = result.stdout.splitlines()
    assert Path(where).resolve().is_relative_to(target.resolve())  # the installed copy
    assert "gradual" in strategies
    module = subprocess.run([sys.executable, "-m", "thawkit", "--version"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert module.returncode == 0 and module.stdout.startswith("thawkit ")
