"""``check_source``: a backbone source against the contract of ``thawkit_register_sources``."""
from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .report import Report

if TYPE_CHECKING:
    from thawkit import ThawkitPluginManager

METHODS = "a source has load(name, options) -> nn.Module and list_models(pattern=None) -> list[str]"
LISTS = "list_models() returns the loadable names: a list of distinct strings"
PATTERN = "list_models(pattern) keeps the names matching the fnmatch pattern"
META = ("load(name, {'device': 'meta'}) builds the model on the meta device (no memory, no weights "
        "read) and leaves the options dict as it was")
CPU = "load(name, {}) builds the model on the CPU"
DESCRIBED = "every model a source loads has a valid layout (every parameter in exactly one block)"
UNKNOWN = ("an unknown name raises thawkit.UnknownNameError naming it; a source that lists its "
           "models gives the closest names (a ThawkitError at least, for one that lists none)")


def check_source(source: Any, names: Sequence[str] | None = None, *, name: str = "checked",
                 pm: ThawkitPluginManager | None = None, cpu: bool = True,
                 max_cpu_params: int | None = None, raises: bool = True) -> Report:
    """Check a source object: listing, loading on meta (and on the CPU unless ``cpu=False``, or
    for models over ``max_cpu_params`` parameters), the layout of what it loads, and the error
    for an unknown name.

    ``names``: models to load (default: the first two ``list_models()`` gives); ``name``:
    the source's name in messages and specs (it is registered under it, replacing any other,
    on ``pm`` or a fresh manager).

    Example::

        def test_my_source():
            check_source(MyZoo(), names=["net-s", "net-m"], name="myzoo")
    """
    import thawkit

    report = Report()
    subject = f"source {name!r}"
    with report.checking(subject, "has load() and list_models()", METHODS) as c:
        for method in ("load", "list_models"):
            if not callable(getattr(source, method, None)):
                c.fail(f"{type(source).__name__} has no {method}()")
    if not c.passed:
        return report.raise_for_failures() if raises else report
    listed: list[str] = []
    with report.checking(subject, "list_models() lists names", LISTS) as c:
        listed = source.list_models()
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            c.fail(f"list_models() returned {type(listed).__name__} {str(listed)[:80]}")
        repeated = sorted({n for n in listed if listed.count(n) > 1}) if len(set(listed)) < len(listed) \
            else []
        if repeated:
            c.fail(f"names repeat: {', '.join(repeated[:5])}")
    if listed:
        with report.checking(subject, "list_models(pattern) filters", PATTERN) as c:
            for pattern in (listed[0], listed[0][:2] + "*", "no-such-model-*"):
                got = source.list_models(pattern)
                want = [n for n in listed if fnmatch.fnmatchcase(n, pattern)]
                if list(got) != want:
                    c.fail(f"list_models({pattern!r}) gave {list(got)[:5]}, not {want[:5]}")
    names = list(names) if names is not None else listed[:2]
    if not names:
        report.skip(subject, "loads models", "it lists no models: pass names=[...] to load")
    pm = _with_source(source, name, pm)
    for model_name in names:
        where = f"{subject} model {model_name!r}"
        size = None
        with report.checking(where, "loads on the meta device", META) as c:
            options = {"device": "meta"}
            model = source.load(model_name, options)
            if options != {"device": "meta"}:
                c.fail(f"load() changed the options dict to {options}")
            _module(model, c)
            on = sorted({p.device.type for p in model.parameters()})
            if on != ["meta"]:
                c.fail(f"the parameters are on {', '.join(on)}")
            size = sum(p.numel() for p in model.parameters())
        with report.checking(where, "has a layout", DESCRIBED):
            thawkit.describe_layout(thawkit.load_backbone(f"{name}:{model_name}", pm=pm, device="meta"),
                                    pm=pm, require_head=False)
        if cpu and max_cpu_params is not None and (size is None or size > max_cpu_params):
            report.skip(where, "loads on the CPU", f"over {max_cpu_params:,} parameters (or not built)")
        elif cpu:
            with report.checking(where, "loads on the CPU", CPU) as c:
                model = source.load(model_name, {})
                _module(model, c)
    with report.checking(subject, "an unknown name is an UnknownNameError", UNKNOWN) as c:
        near = (listed[0][:-1] + ("x" if listed[0][-1] != "x" else "y")) if listed else "no-such-model"
        try:
            source.load(near, {"device": "meta"})
        except thawkit.UnknownNameError as exc:
            if near not in str(exc):
                c.fail(f"the message does not name {near!r}: {exc}")
            if listed and listed[0] not in exc.suggestions:
                c.fail(f"for {near!r} it suggests {exc.suggestions}, not the close {listed[0]!r}: "
                       "pass every known name to UnknownNameError")
        except thawkit.ThawkitError as exc:
            if listed:
                c.fail(f"load({near!r}) raised {type(exc).__name__} ({exc}), not UnknownNameError")
        else:
            c.fail(f"load({near!r}) returned a model")
    return report.raise_for_failures() if raises else report


def _module(model: Any, c: Any) -> None:
    from torch import nn

    if not isinstance(model, nn.Module):
        c.fail(f"load() returned {type(model).__name__}, not an nn.Module")


def _with_source(source: Any, name: str, pm: ThawkitPluginManager | None) -> ThawkitPluginManager:
    import thawkit

    pm = pm or thawkit.get_plugin_manager(entrypoints=False)
    if name not in pm.sources or pm.sources.get(name) is not source:

        class Registers:
            @thawkit.hookimpl
            def thawkit_register_sources(self, register: Any) -> None:
                register(name, source, replace=True)

        pm.register(Registers(), name=f"checked source {name}")
    return pm
