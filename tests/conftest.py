import os
import sys
import textwrap

import pytest

os.environ.setdefault("THAWKIT_PLUGINS", "")  # tests never pick up plugins installed on the machine


@pytest.fixture
def pm():
    """A fresh plugin manager with the built-ins only."""
    import thawkit

    return thawkit.get_plugin_manager(entrypoints=False)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny CPU models run faster (and identically) on one intra-op thread, above all on a
    busy 2-core machine, where torch's default threads made small forwards 10-50x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def clean_env(monkeypatch):
    """No plugin switches set, and no shared manager left over from another test."""
    import thawkit

    monkeypatch.delenv("THAWKIT_PLUGINS", raising=False)
    monkeypatch.delenv("THAWKIT_STRICT_PLUGINS", raising=False)
    thawkit.reset_plugin_manager()
    yield monkeypatch
    thawkit.reset_plugin_manager()


@pytest.fixture
def make_dist(tmp_path, clean_env):
    """``make_dist(name, version, {entry_point: module}, {module: source})`` on sys.path.

    A throwaway distribution: a ``*.dist-info`` folder (METADATA + entry_points.txt) and the
    plugin module, written to a temporary directory put on ``sys.path``, which is all
    ``importlib.metadata`` needs. Returns the folder of the modules."""
    site = tmp_path / "site"
    site.mkdir()
    clean_env.syspath_prepend(str(site))
    modules: list[str] = []

    def make(dist: str, version: str, entry_points: dict[str, str], sources: dict[str, str]):
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[thawkit]\n{lines}")
        for module, source in sources.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            modules.append(module)
        return site

    yield make
    for module in modules:
        sys.modules.pop(module, None)
