"""A plugin written against the docs of an earlier commit keeps working without edits.

Two small third-party-style plugins, as separate source files: one written against the docs before
the last architecture change (``thawkit.layout_from_prefixes`` in ``thawkit_describe_layout``,
``thawkit.arch_options``, a source with ``arch_options(name, options)``), and one written against
the docs of that change (``thawkit.plugins.fallbacks.layout_from_prefixes``,
``thawkit.plugins.weights.arch_options``, a source setting ``model._thawkit_arch_options``). Both
pass the plugin kit's checks, and their architecture options reach ``thawkit.arch_options``."""
from __future__ import annotations

import importlib
import textwrap
import warnings

import pytest
import torch

import thawkit
from thawkit.plugins.testing import check_plugin

MODEL = '''
import fnmatch

import thawkit
import torch
from torch import nn

NAMES = ["pocket-s"]


class Pocket(nn.Module):
    def __init__(self, width=4, scale=1.0, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.stages = nn.Sequential(nn.Conv2d(width, width, 3, padding=1),
                                    nn.Conv2d(width, width, 3, padding=1))
        self.fc = nn.Linear(width, num_classes)
        self.scale = scale

    def forward(self, x):
        return self.fc(self.stages(self.stem(x)).mean((2, 3))) * self.scale


def names(pattern=None):
    return [n for n in NAMES if pattern is None or fnmatch.fnmatchcase(n, pattern)]


def build(name, options):
    """'published' weights were trained with scale=2: a rebuild without them must repeat it."""
    if name not in NAMES:
        raise thawkit.UnknownNameError("pocket model", name, NAMES)
    opts = dict(options)
    device = opts.pop("device", None)
    if opts.pop("weights", None) == "published":
        opts.setdefault("scale", 2.0)
    with torch.device(device or "cpu"):
        return Pocket(**opts)


PREFIXES = dict(stem=["stem"], blocks=[(f"stages.{i}", [f"stages.{i}"]) for i in range(2)],
                head=["fc"], classifiers=["fc"], source="pocket")


@thawkit.hookimpl
def thawkit_register_sources(register):
    register("pocket", PocketSource())  # each plugin below defines its source
'''

# the docs before the last architecture change: helpers from `thawkit`
BEFORE = MODEL + '''

class PocketSource:
    def list_models(self, pattern=None):
        return names(pattern)

    def load(self, name, options):
        return build(name, options)

    def arch_options(self, name, options):
        return {"scale": 2.0} if options.get("weights") == "published" else {}


@thawkit.hookimpl
def thawkit_describe_layout(model, spec):
    if not isinstance(model, Pocket):
        return None
    return thawkit.layout_from_prefixes(model, **PREFIXES)


def rebuild_options(model):
    return thawkit.arch_options(model)
'''

# the docs of the last architecture change: helpers from the plugin modules, a private attribute
AFTER = MODEL + '''
from thawkit.plugins.fallbacks import layout_from_prefixes
from thawkit.plugins.weights import arch_options


class PocketSource:
    def list_models(self, pattern=None):
        return names(pattern)

    def load(self, name, options):
        model = build(name, options)
        if options.get("weights") == "published":
            model._thawkit_arch_options = {"scale": 2.0}
        return model


@thawkit.hookimpl
def thawkit_describe_layout(model, spec):
    if not isinstance(model, Pocket):
        return None
    return layout_from_prefixes(model, **PREFIXES)


def rebuild_options(model):
    return arch_options(model)
'''


def plugin(tmp_path, monkeypatch, name, source):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name)


@pytest.mark.parametrize("name,source", [("pocket_before", BEFORE), ("pocket_after", AFTER)])
def test_a_plugin_written_against_earlier_docs_works_unchanged(tmp_path, monkeypatch, name, source):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = plugin(tmp_path, monkeypatch, name, source)
    moved = sorted(str(w.message).split(" has moved")[0] for w in caught
                   if issubclass(w.category, DeprecationWarning))
    assert moved == ([] if source is BEFORE else ["thawkit.plugins.fallbacks.layout_from_prefixes",
                                                  "thawkit.plugins.weights.arch_options"])

    pm = thawkit.get_plugin_manager(entrypoints=False)
    report = check_plugin(module, pm=pm, raises=False)
    assert report.passed, report
    assert any("pocket" in line for line in str(report).splitlines())

    layout = thawkit.describe_layout(module.build("pocket-s", {}), pm=pm)
    assert layout.source == "pocket" and [b.name for b in layout.blocks] == ["stages.0", "stages.1"]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        published = thawkit.load_backbone("pocket:pocket-s", weights="published", pm=pm)
    legacy = [str(w.message) for w in caught if "_thawkit_arch_options" in str(w.message)]
    assert len(legacy) == (0 if source is BEFORE else 1), legacy
    assert thawkit.arch_options(published) == module.rebuild_options(published) == {"scale": 2.0}
    assert thawkit.spec_of(published).arch_options == {"scale": 2.0}
    assert thawkit.arch_options(thawkit.load_backbone("pocket:pocket-s", pm=pm)) == {}
    # the options survive adapt (a new head) and rebuild the same network without the weights
    adapted = thawkit.adapt(published, "head-only", num_classes=3, pm=pm)
    assert thawkit.arch_options(adapted.model) == {"scale": 2.0}
    rebuilt = thawkit.load_backbone("pocket:pocket-s", pm=pm, num_classes=3,
                                    **thawkit.arch_options(adapted.model))
    rebuilt.load_state_dict(adapted.model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(rebuilt.eval()(x), adapted.model.eval()(x))
