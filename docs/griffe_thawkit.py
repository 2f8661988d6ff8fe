"""Griffe extension for thawkit's docs: the package's source layout, and reST in docstrings.

1. The distribution maps two folders into one package (``[tool.setuptools] package-dir`` in
   pyproject.toml): ``core/`` is ``thawkit`` and ``plugins/`` is ``thawkit.plugins``. Griffe
   reads ``thawkit`` from ``docs/_src/thawkit`` (a link to ``core/``, see ``paths`` in
   mkdocs.yml); this extension loads every other mapped folder and attaches it where the
   mapping puts it, so ``::: thawkit.plugins.train.hookspecs`` works.
2. thawkit's docstrings use reStructuredText roles (``:class:`thawkit.Layout```) and literal
   blocks (``Example::``); they become code spans and fenced Python blocks.
"""
from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import griffe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
ROLE = re.compile(r":(?:class|func|meth|data|attr|mod|exc|obj):`~?([^`]+)`")
PARAMETERS = re.compile(r"^(?P<indent>[ ]*)(?:Parameters|Args|Arguments):\n(?:(?P=indent)[ ]+.*\n)+", re.M)
# "model, layout: the model and its layout." in a Parameters section: one entry per name
SHARED = re.compile(r"^(?P<indent>[ ]+)(?P<names>\w+(?:, \w+)+): (?P<text>.*)$", re.M)
LITERAL = re.compile(r"^(?P<indent>[ ]*)(?P<text>.*?)::[ ]*\n\n"
                     r"(?P<body>(?:(?P=indent)[ ]+\S.*\n|[ ]*\n)+)", re.M)


def package_dirs() -> dict[str, Path]:
    """``{"thawkit": ROOT/"core", "thawkit.plugins": ROOT/"plugins"}``, from pyproject.toml."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items()}


def one_per_name(m: re.Match) -> str:
    return "\n".join(f"{m['indent']}{name}: {m['text']}" for name in m["names"].split(", "))


def markdown(text: str) -> str:
    """reST roles -> code spans; ``a, b: text`` -> one entry each; ``Text::`` and an indented
    block -> ``Text:`` and fenced Python."""
    text = ROLE.sub(lambda m: f"`{m[1]}`", text)
    text = PARAMETERS.sub(lambda m: SHARED.sub(one_per_name, m[0]), text + "\n")

    def fence(m: re.Match) -> str:
        body = textwrap.dedent(m["body"]).strip("\n")
        head = f"{m['indent']}{m['text']}:\n\n" if m["text"].strip() else ""
        return head + textwrap.indent(f"```python\n{body}\n```\n", m["indent"]) + "\n"

    return LITERAL.sub(fence, text + "\n").rstrip("\n")


class ThawkitDocs(griffe.Extension):
    """Attach ``thawkit.plugins`` (and any other mapped sub-package); convert reST docstrings."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for name, folder in package_dirs().items():
            parent, _, leaf = name.rpartition(".")
            if parent != pkg.name or leaf in pkg.members:
                continue
            sub = griffe.GriffeLoader(search_paths=[folder.parent], extensions=loader.extensions,
                                      docstring_parser=loader.docstring_parser,
                                      docstring_options=loader.docstring_options,
                                      lines_collection=loader.lines_collection)
            module = sub.load(folder.name)
            module.name = leaf
            pkg.set_member(leaf, module)

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
