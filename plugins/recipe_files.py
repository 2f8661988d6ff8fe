"""The built-in recipe reader: YAML and JSON files, and ``--set`` overrides, within limits.

Plugin ``thawkit.recipe_files`` answers ``thawkit_read_recipe`` for any file: ``.json`` as JSON,
everything else as YAML (safe loading: no tags that build Python objects). A document is read
within the limits of docs/recipes.md ("Checks and limits"): size, UTF-8, nesting, size with
YAML aliases expanded (a small file cannot expand into a huge one) and digits of an integer;
each is a :class:`thawkit.ConfigError` naming the file, line and column. A ``--set`` value is
YAML read within the same limits; one that does not parse as YAML is kept as a string.

Booleans follow YAML 1.2's core schema: only ``true`` and ``false`` (any case of the first
letter, or all capitals). YAML 1.1's ``yes``, ``no``, ``on``, ``off``, ``y`` and ``n`` are
strings, so ``train.cache: off``, ``--set train.cache=off`` and a run folder named ``off`` mean
what they say.

Core knows no file format: a plugin reading another one (TOML, a config system's files)
answers the hook for its files first, since built-ins are asked last.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import thawkit
from thawkit import ConfigError, hookimpl, quote, shorten


@hookimpl
def thawkit_read_recipe(path: Path, overrides: list[str]) -> dict[str, Any]:
    data = read_mapping(path)
    for item in overrides:
        apply_override(data, item)
    return data


#: Limits on a recipe document (docs/recipes.md, "Checks and limits"): bytes, nesting, size with YAML
#: aliases expanded (one per value plus the characters of each scalar), digits of an integer.
MAX_BYTES, MAX_DEPTH, MAX_EXPANDED, MAX_DIGITS = 100_000, 100, 100_000, 100


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or JSON file within the limits; errors name the file, line and column."""
    path, name = Path(path), shorten(str(path))
    try:
        if not path.is_file():
            raise ConfigError(f"recipe file {name!r} " + ("is not a regular file" if path.exists()
                                                         else "does not exist"))
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"recipe file {name!r} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{name}: a recipe may hold at most {MAX_BYTES:,} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{name}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
                          f"{exc.start}); save the recipe as UTF-8") from None
    data = parse_text(text, name, json_=path.suffix == ".json")
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: a recipe must be a mapping with sections "
                          f"{', '.join(thawkit.Recipe.model_fields)}; got {type(data).__name__}")
    return data


def parse_text(text: str, where: str, *, json_: bool = False) -> Any:
    """YAML (or JSON) text to Python values, within the limits above."""
    import yaml

    if json_:
        def integer(digits: str) -> int:
            if len(digits) > MAX_DIGITS:
                raise ValueError(f"an integer of {len(digits):,} digits (at most {MAX_DIGITS})")
            return int(digits)
        try:
            data = json.loads(text, parse_int=integer)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
        stack = [(data, 1)]  # nesting (a JSON text has no aliases, and its bytes are bounded)
        while stack:
            value, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels")
            stack += [(v, depth + 1) for v in (value.values() if isinstance(value, dict) else
                                               value if isinstance(value, list) else ())]
        return data
    try:
        return _yaml(text, where)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        raise ConfigError(f"{at}: YAML does not parse: {getattr(exc, 'problem', None) or exc}") from None
    except ConfigError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:  # a constructor's (e.g. a date 2020-13-45)
        raise ConfigError(f"{where}: YAML value does not parse: {shorten(str(exc))}") from None


@functools.cache
def _core_schema_loader() -> type:
    """PyYAML's safe loader with YAML 1.2 core-schema booleans (true/false only)."""
    import yaml

    bool_tag = "tag:yaml.org,2002:bool"

    class Loader(yaml.SafeLoader):
        yaml_implicit_resolvers = {
            first: [(tag, regexp) for tag, regexp in resolvers if tag != bool_tag]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    return Loader


def _yaml(text: str, where: str) -> Any:
    """Safe YAML within the limits (a ConfigError past one; yaml.YAMLError on bad syntax)."""
    loader = _core_schema_loader()(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _expanded(node, {}, where)
        return loader.construct_document(node) if node is not None else None
    except RecursionError:  # composing a node nested ~1000 deep, before _expanded could look
        raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def _limit(where: str, mark: Any, what: str) -> ConfigError:
    return ConfigError(f"{where}:{mark.line + 1}:{mark.column + 1}: {what} (recipe limits: "
                       "docs/recipes.md)")


def _expanded(node: Any, seen: dict[int, Any], where: str, level: int = 1) -> tuple[int, int]:
    """Size and depth of ``node`` with aliases expanded; raises past the limits."""
    import yaml

    known = seen.get(id(node), ())
    if known is None:
        raise _limit(where, node.start_mark, "an alias refers to a node that contains it")
    size, height = known or (0, 1)
    if level + height - 1 > MAX_DEPTH:
        raise _limit(where, node.start_mark, f"nested deeper than {MAX_DEPTH} levels")
    if known:
        return size, height
    seen[id(node)] = None
    if isinstance(node, yaml.ScalarNode):
        if node.tag.endswith(":int") and len(node.value) > MAX_DIGITS:
            raise _limit(where, node.start_mark, f"an integer of {len(node.value):,} digits (at "
                         f"most {MAX_DIGITS})")
        size, height = 1 + len(node.value), 1
    else:
        items = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) \
            else node.value
        parts = [_expanded(n, seen, where, level + 1) for n in items]
        size, height = 1 + sum(p[0] for p in parts), 1 + max((p[1] for p in parts), default=0)
    if size > MAX_EXPANDED:
        raise _limit(where, node.start_mark, f"the document expands to more than {MAX_EXPANDED:,} "
                     "values and characters (a YAML alias counts once per use)")
    seen[id(node)] = (size, height)
    return size, height




def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``key.path=value`` in a recipe mapping (the value parsed as YAML), as ``--set`` does."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"--set {quote(item)}: expected key.path=value, e.g. optimizer.lr=0.01")
    key, raw = item.split("=", 1)
    try:
        value = _yaml(raw, f"--set {shorten(key)}")
    except ConfigError:
        raise
    except (yaml.YAMLError, ValueError, TypeError, OverflowError):
        value = raw
    node = data
    parts = key.strip().split(".")
    if len(parts) > MAX_DEPTH:
        raise ConfigError(f"--set {shorten(key)}: a key path of more than {MAX_DEPTH} parts")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {quote(item)}: {shorten(part)} is not a section")
        node = nxt
    node[parts[-1]] = value
