"""The documentation site builds strictly, and a broken link or a missing object breaks it.

``mkdocs build --strict`` runs once per test session into a temporary folder
(:func:`built_site`, shared with the hook-reference meta-tests in tests/test_hookspecs.py).
What the pages show (files, command outputs, runnable Python) is checked in
tests/test_examples.py.
"""
from __future__ import annotations

import atexit
import functools
import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIG = ROOT / "mkdocs.yml"

@functools.cache
def _scratch() -> Path:
    path = Path(tempfile.mkdtemp(prefix="thawkit-docs-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "THAWKIT_PLUGINS": ""}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(config), "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@functools.cache
def built_site() -> tuple[Path, subprocess.CompletedProcess, float]:
    """``mkdocs build --strict`` of the real docs, once: (site folder, process, seconds)."""
    site = _scratch() / "site"
    started = time.perf_counter()
    result = mkdocs_build(CONFIG, site)
    return site, result, time.perf_counter() - started


def site_dir() -> Path:
    """The built site; the build must have passed (skips where the docs extra is missing)."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed")
    site, result, _ = built_site()
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    return site


def nav_pages() -> list[str]:
    nav = yaml.safe_load(CONFIG.read_text())["nav"]
    return [page for entry in nav for page in entry.values()]


# ------------------------------------------------------------------ the real docs
def test_docs_build_strictly_in_seconds():
    site_dir()
    site, result, seconds = built_site()
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, log
    assert (site / "index.html").is_file()
    assert seconds < 60, f"the docs build took {seconds:.0f} s; it should take seconds"


def test_nav_lists_every_page_and_each_is_built():
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert sorted(nav_pages()) == pages, "mkdocs.yml's nav and docs/*.md differ"
    site = site_dir()
    for page in pages:
        built = site / "index.html" if page == "index.md" else site / page[:-3] / "index.html"
        assert built.is_file(), f"{page} was not built"


def test_api_reference_renders_the_public_api():
    page = (site_dir() / "api" / "index.html").read_text()
    for name in ("Layout", "Block", "Phase", "Strategy", "StrategyParams", "Adapted", "Plan",
                 "OptimizerSettings", "BackboneSpec", "DataConfig", "Recipe", "ThawkitError",
                 "ConfigError", "UnknownNameError", "PluginError", "WeightsError", "LayoutError",
                 "adapt", "replace_head", "describe_layout", "data_config",
                 "load_backbone", "load_recipe", "validate_recipe", "adapt_recipe",
                 "get_plugin_manager", "register", "layout_from_prefixes", "generic_layout",
                 "new_classifier", "split_sequential", "arch_options"):
        assert f'id="thawkit.{name}"' in page, f"the API reference lacks thawkit.{name}"
    for name in ("plugins.distributed.DistributedAdapted", "plugins.split.frozen_prefix"):
        assert f'id="thawkit.{name}"' in page, f"the API reference lacks thawkit.{name}"


def test_docs_read_thawkit_where_pyproject_maps_it():
    """docs/_src/thawkit is a link to the folder that pyproject.toml installs as ``thawkit``."""
    ext = griffe_extension()
    mapping = ext.package_dirs()
    assert mapping["thawkit"] == ROOT / "core" and mapping["thawkit.plugins"] == ROOT / "plugins"
    assert (DOCS / "_src" / "thawkit").resolve() == mapping["thawkit"].resolve()


# ------------------------------------------------------- strictness, on a tiny site
def tiny_site(tmp_path: Path, page: str) -> subprocess.CompletedProcess:
    """Build one page with the real mkdocs.yml's settings (``INHERIT``)."""
    site_dir()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(page)
    config = tmp_path / "mkdocs.yml"
    [mkdocstrings] = [p["mkdocstrings"] for p in yaml.safe_load(CONFIG.read_text())["plugins"]
                      if isinstance(p, dict) and "mkdocstrings" in p]
    python = mkdocstrings["handlers"]["python"]
    extensions = [str(ROOT / e) for e in python["options"]["extensions"]]
    config.write_text(yaml.safe_dump({
        "INHERIT": str(CONFIG), "docs_dir": str(docs), "nav": [{"Home": "index.md"}],
        "plugins": [{"mkdocstrings": {"handlers": {"python": {
            "paths": [str(ROOT / p) for p in python["paths"]],
            "options": {"extensions": extensions}}}}}]}))
    return mkdocs_build(config, tmp_path / "site")


def test_tiny_site_builds(tmp_path):
    result = tiny_site(tmp_path, "# Home\n\n::: thawkit.hookspecs.thawkit_adapted\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'id="thawkit.hookspecs.thawkit_adapted"' in (tmp_path / "site" / "index.html").read_text()


@pytest.mark.parametrize("page, error", [
    ("# Home\n\n::: thawkit.no_such_object\n", "thawkit.no_such_object"),
    ("# Home\n\nSee [the missing page](missing.md).\n", "missing.md"),
    ("# Home\n\nSee [a missing object][thawkit.NoSuchClass].\n", "thawkit.NoSuchClass"),
], ids=["missing-object", "missing-page", "missing-cross-reference"])
def test_a_broken_reference_fails_the_build(tmp_path, page, error):
    result = tiny_site(tmp_path, page)
    assert result.returncode != 0, f"the build passed with {page!r}"
    assert error in result.stdout + result.stderr


# ---------------------------------------------------------- the griffe extension
def griffe_extension():
    pytest.importorskip("griffe", reason="the docs extra is not installed: pip install -e '.[docs]'")
    spec = importlib.util.spec_from_file_location("griffe_thawkit", DOCS / "griffe_thawkit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extension_turns_rest_into_markdown():
    doc = textwrap.dedent("""\
        Return a :class:`thawkit.DataConfig` or :meth:`~thawkit.Adapted.optimizer`.

        Parameters:
            model, layout: the model and its layout.
            spec: how it was loaded.

        Example::

            @thawkit.hookimpl
            def f(model):
                return None
        """)
    assert griffe_extension().markdown(doc) == textwrap.dedent("""\
        Return a `thawkit.DataConfig` or `thawkit.Adapted.optimizer`.

        Parameters:
            model: the model and its layout.
            layout: the model and its layout.
            spec: how it was loaded.

        Example:

        ```python
        @thawkit.hookimpl
        def f(model):
            return None
        ```""")


def hook_reference() -> dict[str, tuple[str, list[str]]]:
    """``{object id: (signature text, names in its Parameters table)}`` from the built hook page."""
    page = (site_dir() / "hooks" / "index.html").read_text()
    headings = list(re.finditer(r'<h\d id="([^"]+)" class="doc doc-heading">', page))
    out = {}
    for heading, following in zip(headings, headings[1:] + [None]):
        chunk = page[heading.end():following.start() if following else len(page)]
        signature = re.search(r'<div class="doc-signature[^"]*">(.*?)</div>', chunk, re.S)
        table = chunk.split('<span class="doc-section-title">Parameters:</span>', 1)[1:]
        names = re.findall(r'<tr class="doc-section-item">\s*<td>\s*<code>(\w+)</code>',
                           table[0].split("</table>", 1)[0]) if table else []
        text = html.unescape(re.sub(r"<[^>]+>", "", signature[1])).strip() if signature else ""
        out[heading[1]] = (text, names)
    return out


def page_text(name: str) -> str:
    """The text of a built page's article, tags removed."""
    page = (site_dir() / name / "index.html").read_text()
    article = page[page.index("<article"):page.index("</article>")]
    return html.unescape(re.sub(r"<[^>]+>", "", article))


def test_docstrings_render_without_rest_markup():
    for name in ("hooks", "api"):
        text = page_text(name)
        for leftover in (":class:", ":func:", ":meth:", ":data:", "Example::"):
            assert leftover not in text, f"{name}: reST markup {leftover!r} reached the page"
