"""``check_recipe_reader``: a ``thawkit_read_recipe`` plugin against the hook's contract."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .report import Report

HOSTILE = ("a missing, unreadable or malformed file gives None (not this plugin's file), a "
           "mapping or a thawkit.ConfigError, never another exception")
UNCHANGED = "the reader changes nothing: the file's bytes and its folder stay as they were"
MAPPING = "a file the plugin reads gives a mapping (a dict), the same one each time"
OVERRIDE = "--set key.path=value sets that key ('optimizer.lr=0.5' gives optimizer.lr 0.5)"
BAD_OVERRIDE = "an override without '=' raises thawkit.ConfigError naming it"
SUFFIXES = (".yaml", ".yml", ".json", ".toml", ".ini", ".cfg", "")
CONTENTS = {"an empty file": b"", "bytes that are not UTF-8": b"\xff\xfe\x00\x81recipe",
            "unbalanced brackets": b"[[{{ backbone: = ::\n", "a bare word": b"recipe\n"}


def check_recipe_reader(plugin: Any, *, sample: str | Path | None = None, name: str | None = None,
                        raises: bool = True) -> Report:
    """Run ``plugin``'s ``thawkit_read_recipe`` on hostile files of every common suffix (missing,
    a folder, empty, not UTF-8, malformed) and, given ``sample`` (a recipe file in the plugin's
    format that names an ``optimizer``), on that file with and without overrides.

    Example::

        def test_reader():
            check_recipe_reader(my_plugin, sample="tests/data/recipe.toml")
    """
    import thawkit

    report = Report()
    subject = f"recipe reader {name or getattr(plugin, '__name__', type(plugin).__name__)!r}"
    pm = thawkit.get_plugin_manager(entrypoints=False, builtins=False)
    pm.register(plugin, name="checked")

    def read(path: Path, overrides: list[str]) -> Any:
        return pm.hook.thawkit_read_recipe(path=path, overrides=overrides)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = [(f"a missing {s or 'suffix-less'} file", folder / f"missing{s}") for s in SUFFIXES]
        files += [("a folder", folder / "folder.yaml")]
        (folder / "folder.yaml").mkdir()
        for i, suffix in enumerate(SUFFIXES):
            for j, (what, content) in enumerate(CONTENTS.items()):
                path = folder / f"hostile{i}_{j}{suffix}"
                path.write_bytes(content)
                files.append((f"{what} ({suffix or 'no suffix'})", path))
        before = _snapshot(folder)
        with report.checking(subject, "hostile files", HOSTILE) as c:
            for what, path in files:
                for overrides in ([], ["optimizer.lr=0.5"]):
                    try:
                        answer = read(path, overrides)
                    except thawkit.ConfigError:
                        continue
                    except Exception as exc:  # noqa: BLE001 - what the contract forbids
                        c.fail(f"on {what} it raised {type(exc).__name__}: {exc}")
                    if answer is not None and not isinstance(answer, dict):
                        c.fail(f"on {what} it returned {type(answer).__name__}")
        with report.checking(subject, "changes nothing", UNCHANGED) as c:
            if _snapshot(folder) != before:
                c.fail("the folder of the files it read changed")
    if sample is None:
        report.skip(subject, "reads a recipe", "no sample file given (sample=...)")
        return report.raise_for_failures() if raises else report
    path = Path(sample)
    before = path.read_bytes()
    with report.checking(subject, "reads a recipe", MAPPING) as c:
        first, second = read(path, []), read(path, [])
        if not isinstance(first, dict) or first != second:
            c.fail(f"it returned {first!r:.200}, then {second!r:.200}")
    with report.checking(subject, "applies overrides", OVERRIDE) as c:
        data = read(path, ["optimizer.lr=0.5"])
        if not isinstance(data, dict) or (data.get("optimizer") or {}).get("lr") != 0.5:
            c.fail(f"with --set optimizer.lr=0.5 its optimizer section is "
                   f"{data.get('optimizer') if isinstance(data, dict) else data!r:.200}")
    with report.checking(subject, "refuses a bad override", BAD_OVERRIDE) as c:
        try:
            read(path, ["optimizer"])
        except thawkit.ConfigError as exc:
            if "optimizer" not in str(exc):
                c.fail(f"its message does not name the override: {exc}")
        else:
            c.fail("--set optimizer (no '=') was accepted")
    with report.checking(subject, "changes nothing", UNCHANGED) as c:
        if path.read_bytes() != before:
            c.fail(f"{path} changed")
    return report.raise_for_failures() if raises else report


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}
