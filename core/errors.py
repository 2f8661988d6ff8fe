"""Errors that are part of thawkit's interface.

Every error a user can cause derives from :class:`ThawkitError`. The CLI turns
them into one clear message and exit code 2, never a traceback.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError


class ThawkitError(Exception):
    """Base class of every error caused by user input (recipe, names, files, plugins)."""


class UnknownNameError(ThawkitError, KeyError):
    """A strategy, optimizer, source, model or block name that is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str], *, where: str | None = None) -> None:
        self.kind, self.name = kind, name
        self.known = sorted(known)
        self.suggestions = closest(name, self.known)
        super().__init__(self._message(where))

    def _message(self, where: str | None) -> str:
        prefix = f"{where}: " if where else ""
        msg = f"{prefix}unknown {self.kind} {quote(self.name)}"
        if self.suggestions:
            msg += f"; did you mean {', '.join(repr(s) for s in self.suggestions)}?"
        plural = self.kind[:-1] + "ies" if self.kind.endswith("y") else self.kind + "s"
        if "model" not in self.kind or len(self.known) <= 60:
            msg += f"\navailable {plural}: {', '.join(self.known) or '(none)'}"
        else:
            msg += f"\n{len(self.known)} {plural} are available; list them with `thawkit models`"
        return msg

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ConfigError(ThawkitError, ValueError):
    """A recipe or parameter that does not validate; the message names the field path."""


class PluginError(ThawkitError):
    """A plugin failed to import, register or contribute, or two plugins clash."""


class WeightsError(ThawkitError):
    """A weights file that is missing, unreadable, unsafe or for another architecture."""


class LayoutError(ThawkitError):
    """A model layout that does not assign every parameter to exactly one block."""


#: How much of a user's value an error message quotes (docs/recipes.md, "Limits").
QUOTE_LIMIT = 200


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, with a marker saying how much was cut."""
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text) - limit:,} more characters]"


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (:func:`shorten`)."""
    return shorten(repr(value), limit)


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The registered names nearest to ``name`` (case-insensitive), best first."""
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[h] for h in hits]


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(recipe)"


def format_validation_error(exc: ValidationError, *, where: str, model: type[BaseModel],
                            prefix: tuple[Any, ...] = ()) -> str:
    """A pydantic error as one line per problem: ``where: field.path: what is wrong``.

    Unknown fields list the fields ``model`` allows at that place. ``prefix`` is
    prepended to every field path (``("strategy",)`` for a strategy's ``Params``).
    Plugins use it to report their own pydantic models the way recipes are reported.
    """
    lines, errors = [], exc.errors()
    for err in errors[:20]:
        loc = prefix + tuple(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed, name = _allowed_fields(model, loc[len(prefix):-1]), str(loc[-1])
            hints = [f"did you mean {h!r}?" for h in closest(name, allowed, n=1)] or [  # wrong section?
                f"it belongs in {f}: {_loc((*prefix, f, name))}" for f, info in model.model_fields.items()
                if name in getattr(_model_in(info.annotation), "model_fields", ())][:1]
            listed = [f"allowed fields: {', '.join(allowed)}"] if allowed else []
            msg = "; ".join(["unknown field", *listed, *hints])
        elif err["type"] == "missing":
            msg = "field required"
        lines.append(f"{where}: {shorten(_loc(loc))}: {shorten(msg, 2 * QUOTE_LIMIT)}")
    if len(errors) > 20:
        lines.append(f"{where}: ... and {len(errors) - 20} more problems")
    return "\n".join(lines)


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc:
        if isinstance(part, int):  # a list index: stay on the item model
            continue
        field = model.model_fields.get(str(part))
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``Model``, ``Model | None`` or ``list[Model]``."""
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
