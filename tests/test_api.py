"""A public name is a promise: it does not disappear or change its signature incompatibly unless
CHANGELOG.md says so.

tests/api_snapshot.json records every public name: ``thawkit.__all__``, the names that moved out of
``thawkit`` and the modules that moved (their deprecated aliases), and every object the docs render
with ``::: name`` (docs/*.md: the API and hook references, documented plugin modules). For each:
its kind, its parameters (name, kind, whether it has a default) and, for a class, its public
members. The test compares the live API with it (names are imported, so lazy names and
deprecated aliases count as they behave). A name that is gone or whose signature breaks a caller
(a parameter removed, moved, made keyword-only or required) fails unless the Removed or Changed
subsection of CHANGELOG.md's Unreleased section names it in backticks (```thawkit.adapt```). A new
public name must be recorded too. After a deliberate change, regenerate the snapshot and commit it:

    python tests/test_api.py --update

Names the snapshot holds stay in it while they still import (a deprecated alias stays protected
until its removal is listed in the changelog).
"""
from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "tests" / "api_snapshot.json"
CHANGELOG = ROOT / "CHANGELOG.md"
UPDATE = "python tests/test_api.py --update"
POSITIONAL = ("positional_only", "positional_or_keyword")


# ------------------------------------------------------------------ the live API
def documented_names() -> set[str]:
    """Every ``::: name`` the docs render."""
    return {m for page in sorted((ROOT / "docs").glob("*.md"))
            for m in re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), re.M)}


def public_names() -> set[str]:
    import thawkit

    return ({f"thawkit.{n}" for n in thawkit.__all__} | {f"thawkit.{n}" for n in thawkit._MOVED}
            | set(thawkit._MOVED_MODULES) | documented_names())


def lookup(name: str) -> Any:
    """The object ``name`` imports as (module, then attributes); raises when it does not."""
    parts = name.split(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated aliases count as names
        for cut in range(len(parts), 0, -1):
            try:
                value = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError as exc:
                if exc.name is not None and not ".".join(parts[:cut]).startswith(exc.name):
                    raise  # the module exists but fails to import something else
                continue
            for part in parts[cut:]:
                value = getattr(value, part)
            return value
    raise ModuleNotFoundError(name)


def parameters(obj: Any) -> list[list[Any]] | None:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    return [[p.name, p.kind.name.lower(), p.default is not inspect.Parameter.empty]
            for p in signature.parameters.values()]


def kind_of(obj: Any) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "class"
    return "function" if callable(obj) else "data"


def members(cls: type) -> dict[str, Any]:
    """Public members a class defines itself or inherits from thawkit's classes (not torch's,
    pydantic's or pluggy's)."""
    foreign = set().union(*(dir(base) for base in cls.__mro__[1:]
                            if not base.__module__.startswith("thawkit")))
    out: dict[str, Any] = {}
    for name in sorted(set(dir(cls)) - foreign):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, property):
            out[name] = {"kind": "property"}
        elif callable(raw) or isinstance(raw, (classmethod, staticmethod)):
            out[name] = {"kind": "function", "params": parameters(getattr(cls, name))}
        else:
            out[name] = {"kind": "data"}
    return out


def describe(obj: Any) -> dict[str, Any]:
    kind = kind_of(obj)
    entry: dict[str, Any] = {"kind": kind}
    if kind in ("function", "class"):
        entry["params"] = parameters(obj)
    if kind == "class":
        entry["members"] = members(obj)
    return entry


def live_api(names: set[str]) -> dict[str, dict[str, Any] | None]:
    """``name -> describe(object)``, or ``None`` for a name that no longer imports."""
    out: dict[str, dict[str, Any] | None] = {}
    for name in sorted(names):
        try:
            out[name] = describe(lookup(name))
        except (ImportError, AttributeError):
            out[name] = None
    return out


# ------------------------------------------------------------------ the comparison
def signature_breaks(old: list[list[Any]] | None, new: list[list[Any]] | None) -> list[str]:
    """What a caller of ``old`` would find broken in ``new`` (empty: compatible)."""
    if old is None or new is None:
        return [] if old == new or old is None else ["its signature can no longer be read"]
    problems = []
    now = {p[0]: p for p in new}
    old_pos = [p[0] for p in old if p[1] in POSITIONAL]
    new_pos = [p[0] for p in new if p[1] in POSITIONAL]
    takes_kwargs = any(p[1] == "var_keyword" for p in new)
    for name, kind, default in old:
        if kind in ("var_positional", "var_keyword"):
            if not any(p[1] == kind for p in new):
                problems.append(f"{'*' if kind == 'var_positional' else '**'}{name} was removed")
            continue
        if name not in now:
            if not (kind == "keyword_only" and takes_kwargs):
                problems.append(f"parameter {name!r} was removed")
            continue
        _, new_kind, new_default = now[name]
        if kind in POSITIONAL:
            if new_kind not in POSITIONAL:
                problems.append(f"parameter {name!r} can no longer be passed by position")
            elif new_pos.index(name) != old_pos.index(name):
                problems.append(f"parameter {name!r} moved from position {old_pos.index(name) + 1} "
                                f"to {new_pos.index(name) + 1}")
        if kind != "positional_only" and new_kind == "positional_only":
            problems.append(f"parameter {name!r} can no longer be passed by keyword")
        if default and not new_default:
            problems.append(f"parameter {name!r} lost its default (callers that omit it break)")
    olds = {p[0] for p in old}
    problems += [f"new required parameter {name!r}" for name, kind, default in new
                 if name not in olds and not default and kind not in ("var_positional", "var_keyword")]
    return problems


def entry_breaks(name: str, old: dict[str, Any], new: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``(name, problem)`` pairs: the name is gone, or changed in a way that breaks its users."""
    if new is None:
        return [(name, "is gone")]
    callable_kinds = ("function", "class")
    if old["kind"] != new["kind"] and not (old["kind"] in callable_kinds and new["kind"] in callable_kinds):
        return [(name, f"was a {old['kind']}, is now a {new['kind']}")]
    out = [(name, p) for p in signature_breaks(old.get("params"), new.get("params"))]
    for member, was in old.get("members", {}).items():
        out += entry_breaks(f"{name}.{member}", was, new.get("members", {}).get(member))
    return out


def unreleased(changelog: str) -> str:
    """The text of the changelog's ``## [Unreleased]`` section."""
    match = re.search(r"^## \[Unreleased\][^\n]*\n(.*?)(?=^## |\Z)", changelog, re.M | re.S)
    return match.group(1) if match else ""


def announced(changelog: str) -> str:
    """The Removed and Changed subsections of the Unreleased section: where a break is announced
    (a name under Added, Deprecated or Fixed still works)."""
    parts = re.split(r"^(### \w+)", unreleased(changelog), flags=re.M)
    return "".join(text for heading, text in zip(parts[1::2], parts[2::2])
                   if heading in ("### Removed", "### Changed"))


def breaking_changes(snapshot: dict[str, Any], live: dict[str, Any], changelog: str) -> list[str]:
    """Every break of a snapshot name that the changelog's Unreleased section does not announce
    under Removed or Changed."""
    listed = announced(changelog)
    problems = []
    for name, old in sorted(snapshot.items()):
        for what, problem in entry_breaks(name, old, live.get(name)):
            if not re.search(rf"`{re.escape(what)}(?:`|\()", listed):
                problems.append(f"{what} {problem}")
    return problems


def render(api: dict[str, Any]) -> str:
    """One name per line, sorted, so that two branches' additions merge without conflict."""
    lines = [f"  {json.dumps(name)}: {json.dumps(entry, sort_keys=True)}"
             for name, entry in sorted(api.items())]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def update() -> dict[str, Any]:
    """Write the snapshot: today's public names plus the recorded ones that still import."""
    old = json.loads(SNAPSHOT.read_text()) if SNAPSHOT.exists() else {}
    api = {name: entry for name, entry in live_api(public_names() | set(old)).items() if entry is not None}
    SNAPSHOT.write_text(render(api))
    return api


# ------------------------------------------------------------------ the tests
@pytest.fixture(scope="module")
def snapshot() -> dict[str, Any]:
    assert SNAPSHOT.exists(), f"{SNAPSHOT.name} is missing: run {UPDATE}"
    return json.loads(SNAPSHOT.read_text())


@pytest.fixture(scope="module")
def live(snapshot) -> dict[str, Any]:
    return live_api(public_names() | set(snapshot))


def test_no_public_name_breaks_unless_the_changelog_says_so(snapshot, live):
    problems = breaking_changes(snapshot, live, CHANGELOG.read_text())
    assert not problems, (
        "public API changed incompatibly:\n  " + "\n  ".join(problems) + "\nKeep the old name working "
        "(a moved name: thawkit.moved_names / thawkit/__init__.py's _MOVED, warning with a "
        "DeprecationWarning), or list it under Removed or Changed in CHANGELOG.md's Unreleased section "
        "(`name` in backticks) "
        f"and then run {UPDATE}")


def test_every_public_name_is_in_the_snapshot(snapshot, live):
    missing = sorted(name for name, entry in live.items() if entry is not None and name not in snapshot)
    assert not missing, f"public names not in {SNAPSHOT.name}: {', '.join(missing)}; run {UPDATE}"
    gone_from_docs = sorted(n for n in documented_names() if live.get(n) is None)
    assert not gone_from_docs, f"the docs render names that do not import: {gone_from_docs}"


def test_the_check_fails_for_a_removed_name_and_an_incompatible_signature(monkeypatch, snapshot):
    """The real machinery on the real API: drop thawkit.arch_options, and give
    thawkit.layout_from_prefixes a new required parameter and a keyword-only ``stem``."""
    import thawkit

    names = {"thawkit.arch_options", "thawkit.layout_from_prefixes"}
    recorded = {n: snapshot[n] for n in names}
    assert breaking_changes(recorded, live_api(names), "") == []

    monkeypatch.delitem(thawkit._LAZY, "arch_options")
    monkeypatch.delattr(thawkit, "arch_options", raising=False)

    def layout_from_prefixes(model, layout_name, *, stem, blocks, head, neck=None, classifiers=(),
                             aux=(), feeds=None, source="generic"):
        raise AssertionError("not called")

    monkeypatch.setattr(thawkit, "layout_from_prefixes", layout_from_prefixes)
    problems = breaking_changes(recorded, live_api(names), "")
    assert problems == ["thawkit.arch_options is gone",
                        "thawkit.layout_from_prefixes new required parameter 'layout_name'"], problems
    # stem moved from keyword to keyword-only? it was keyword-only already; a positional one:
    assert signature_breaks([["a", "positional_or_keyword", False], ["b", "positional_or_keyword", True]],
                            [["a", "positional_or_keyword", False], ["b", "keyword_only", True]]) \
        == ["parameter 'b' can no longer be passed by position"]
    # the changelog's Unreleased section naming them under Removed / Changed allows both; an
    # older section, or another subsection (Added, Fixed), does not
    listed = "## [Unreleased]\n### Removed\n- `thawkit.arch_options`\n### Changed\n" \
             "- `thawkit.layout_from_prefixes(model, layout_name, ...)` takes a name\n## [0.1.0]\n"
    assert breaking_changes(recorded, live_api(names), listed) == []
    older = "## [Unreleased]\n## [0.1.0]\n- `thawkit.arch_options`, `thawkit.layout_from_prefixes`\n"
    assert len(breaking_changes(recorded, live_api(names), older)) == 2
    added = "## [Unreleased]\n### Added\n- `thawkit.arch_options`, `thawkit.layout_from_prefixes`\n"
    assert len(breaking_changes(recorded, live_api(names), added)) == 2


def test_a_removed_class_member_is_a_break(snapshot):
    recorded = {"thawkit.Adapted": snapshot["thawkit.Adapted"]}
    assert "frozen_prefix" in recorded["thawkit.Adapted"]["members"]  # restored as a deprecated alias
    now = json.loads(json.dumps(recorded["thawkit.Adapted"]))
    del now["members"]["frozen_prefix"]
    assert breaking_changes(recorded, {"thawkit.Adapted": now}, "") == \
        ["thawkit.Adapted.frozen_prefix is gone"]


def test_the_changelog_keeps_a_changelog_form():
    text = CHANGELOG.read_text()
    assert text.startswith("# Changelog\n") and "keepachangelog.com" in text
    section = unreleased(text)
    headings = re.findall(r"^### (\w+)", section, re.M)
    assert headings and set(headings) <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    assert len(headings) == len(set(headings)), f"a heading appears twice in Unreleased: {headings}"


# ------------------------------------------------------------------ moved names
def _aliases() -> dict[str, str]:
    """Every deprecated alias: old dotted name -> new dotted name."""
    import thawkit
    from thawkit.deprecation import dotted

    out = {f"thawkit.{old}": dotted(new) for old, new in thawkit._MOVED.items()}
    out.update(thawkit._MOVED_MODULES)
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        if "moved_names(__name__" in path.read_text():
            parts = path.relative_to(ROOT / "plugins").with_suffix("").parts
            module = ".".join(("thawkit", "plugins", *[p for p in parts if p != "__init__"]))
            moves = importlib.import_module(module).__getattr__.moves
            out.update({f"{module}.{old}": dotted(new) for old, new in moves.items()})
    return out


def test_every_alias_warns_naming_the_new_place_and_gives_the_same_object():
    aliases = _aliases()
    assert {"thawkit.plugins.fallbacks.layout_from_prefixes", "thawkit.plugins.weights.arch_options",
            "thawkit.plugins.split.split_sequential", "thawkit.cli"} <= set(aliases)
    import thawkit

    for old, new in aliases.items():
        module, _, name = old.rpartition(".")
        if old in thawkit._MOVED_MODULES:
            sys.modules.pop(old, None)
            with pytest.warns(DeprecationWarning, match=re.escape(f"{old} has moved to {new}")) as caught:
                __import__(old)
            value = sys.modules[old]
            assert value.__name__ == old and set(dir(lookup(new))) <= set(dir(value))
        else:
            with pytest.warns(DeprecationWarning, match=re.escape(f"{old} has moved to {new}")) as caught:
                value = getattr(importlib.import_module(module), name)
            assert value is lookup(new), old
        # the warning points at the line that used the old name (this file), not at thawkit
        assert all(Path(w.filename) == Path(__file__) for w in caught), [w.filename for w in caught]


def test_from_import_of_an_old_name_warns_at_the_importing_line():
    with pytest.warns(DeprecationWarning, match="thawkit.layout_from_prefixes") as caught:
        from thawkit.plugins.fallbacks import layout_from_prefixes
    import thawkit

    assert layout_from_prefixes is thawkit.layout_from_prefixes
    assert Path(caught[0].filename) == Path(__file__)
    with pytest.raises(ImportError, match="cannot import name 'no_such_name'"):
        from thawkit.plugins.fallbacks import no_such_name  # noqa: F401


def test_built_ins_examples_and_docs_use_no_deprecated_name():
    """What thawkit ships imports moved names from their new place (a third party's old code
    keeps working; ours shows the way)."""
    import thawkit

    aliases = _aliases()
    files = [*sorted((ROOT / "plugins").rglob("*.py")), *sorted((ROOT / "examples").rglob("*.py")),
             *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "docs").rglob("*.py")),
             ROOT / "README.md"]
    found = []
    for path in files:
        text = path.read_text()
        for old in aliases:
            module, _, name = old.rpartition(".")
            relative = r"\.+" + re.escape(module.rsplit(".", 1)[-1])
            patterns = [rf"(?<![\w.]){re.escape(old)}\b",
                        rf"from (?:{re.escape(module)}|{relative}) import [^\n]*(?:\(\s*[^)]*)?\b{name}\b"]
            if old in thawkit._MOVED_MODULES:
                patterns = [rf"(?:import|from) {re.escape(old)}\b"]
            if any(re.search(p, text) for p in patterns):
                found.append(f"{path.relative_to(ROOT)}: {old}")
    assert not found, "deprecated names used (import them from their new place):\n  " + "\n  ".join(found)


def test_a_core_helper_is_importable_from_thawkit_with_its_module_path():
    import thawkit

    for name in ("layout_from_prefixes", "generic_layout", "last_linear", "new_classifier",
                 "set_submodule", "split_sequential", "ForwardStep", "stochastic"):
        assert getattr(thawkit, name).__module__ == "thawkit.building", name
    assert thawkit.arch_options.__module__ == "thawkit.backbone"


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(f"usage: {UPDATE}")
    print(f"{SNAPSHOT.relative_to(ROOT)}: {len(update())} public names")
