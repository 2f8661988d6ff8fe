"""What ``thawkit check-plugin`` does: find the plugin, run :func:`check_plugin`, print the report.

The plugin is looked up as a built-in plugin name, a ``.py`` file, an installed entry point
or distribution (whatever ``THAWKIT_PLUGINS`` says: it is named on purpose) and then a
module name. It is checked on a fresh manager with the built-ins only, so other installed
plugins neither help nor disturb it.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import warnings
from pathlib import Path
from typing import Any

from .plugin import check_plugin
from .report import Report


def _installed() -> dict[str, list[str]]:
    """Entry point and distribution names of installed thawkit plugins -> their entry points."""
    out: dict[str, list[str]] = {}
    for ep in importlib.metadata.entry_points(group="thawkit"):
        dist = getattr(ep, "dist", None)
        for key in {ep.name, dist.metadata["Name"] if dist is not None else ep.name}:
            out.setdefault(key, []).append(ep.name)
    return out


def _is_module(ref: str) -> bool:
    try:
        return importlib.util.find_spec(ref) is not None
    except (ImportError, ValueError):
        return False


def resolve(ref: str, pm: Any) -> list[str]:
    """Load ``ref`` into ``pm``; the plugin names to check. A name nothing answers to is a
    :class:`thawkit.ThawkitError` (exit code 2); a plugin that fails to load is left to the
    report (in ``pm.load_errors``)."""
    from thawkit import PluginError, ThawkitError, closest

    if ref in pm.builtin_names:
        return [ref]
    installed = _installed()
    looks_like_file = ref.endswith(".py") or "/" in ref
    if looks_like_file and not Path(ref).is_file():
        raise ThawkitError(f"no plugin file {ref!r}")
    if not looks_like_file and ref in installed:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a failure is reported by the check
            try:
                pm.load_entrypoints(only=[ref])
            except PluginError as exc:  # THAWKIT_STRICT_PLUGINS
                pm.load_errors.setdefault(ref, str(exc))
        return installed[ref]
    if looks_like_file or _is_module(ref):
        name = str(Path(ref)) if looks_like_file else ref
        try:
            pm.load_local(ref)
        except PluginError as exc:
            pm.load_errors[name] = str(exc)
        return [name]
    known = sorted({*installed, *pm.builtin_names})
    hint = "".join(f"; did you mean {h!r}?" for h in closest(ref, known, n=1))
    raise ThawkitError(f"no installed plugin, distribution, built-in plugin, module or .py file is "
                       f"called {ref!r}{hint}; installed: {', '.join(sorted(installed)) or '(none)'}")


def run_check_plugin(args: argparse.Namespace) -> int:
    import thawkit

    pm = thawkit.get_plugin_manager(entrypoints=False)
    if args.recipe is not None and not Path(args.recipe).is_file():
        raise thawkit.ThawkitError(f"--recipe {args.recipe!r}: no such file")
    names = resolve(args.plugin, pm)
    report = Report()
    for name in names:
        print(f"checking {pm.describe_plugin(name)}")
        plugin = pm.get_plugin(name)
        if plugin is None:
            report.findings.append(_load_failure(name, pm.load_errors.get(name, "it was not loaded")))
            continue
        report.extend(check_plugin(plugin, pm=pm, models=args.model, recipe=args.recipe,
                                    raises=False))
    print(report.format(verbose=args.verbose))
    return 0 if report.passed else 1


def _load_failure(name: str, error: str) -> Any:
    from .report import Finding

    return Finding(f"plugin {name!r}", "loads", "fail",
                   f"{error}; the contract: a plugin imports and registers without error")
