"""``pattern``: regexes over parameter names decide what trains; the new head always trains.

Covers hand-written recipes such as ``if 'layer4' in name``: ``include: [layer4]``.
"""
from __future__ import annotations

import re

from pydantic import Field, field_validator

from thawkit import ConfigError, Phase, Strategy, StrategyParams, hookimpl, quote


def _compile(patterns: list[str], field: str) -> list[re.Pattern]:
    out = []
    for i, pat in enumerate(patterns):
        try:
            out.append(re.compile(pat))
        except re.error as exc:
            raise ConfigError(f"{field}.{i}: {quote(pat)} is not a valid regex: {exc}") from None
    return out


class PatternParams(StrategyParams):
    include: list[str] = Field(default_factory=list,
                               description="Regexes (re.search) of parameter names that train.")
    exclude: list[str] = Field(default_factory=list,
                               description="Regexes of parameter names kept frozen (wins over include).")

    @field_validator("include", "exclude")
    @classmethod
    def _valid(cls, v: list[str], info) -> list[str]:
        _compile(v, info.field_name)
        return v


def match_patterns(names: list[str], patterns: list[str], field: str) -> set[str]:
    """Names matched by any pattern; a pattern that matches nothing is an error."""
    out: set[str] = set()
    for pat, rx in zip(patterns, _compile(patterns, f"strategy.{field}")):
        hits = {n for n in names if rx.search(n)}
        if not hits:
            raise ConfigError(f"strategy.{field}: pattern {quote(pat)} matches no parameter; parameter "
                              f"names look like {', '.join(names[:3])}, ..., {names[-1]}")
        out |= hits
    return out


class Pattern(Strategy):
    name = "pattern"
    description = "Parameters whose names match include (minus exclude) regexes, plus the head."
    Params = PatternParams

    def phases(self, layout, model):
        names = [n for n, _ in model.named_parameters()]
        chosen = match_patterns(names, self.params.include, "include")
        chosen -= match_patterns(names, self.params.exclude, "exclude")
        return [Phase(0, chosen | set(layout.head.params), "pattern + head")]


@hookimpl
def thawkit_register_strategies(register):
    register(Pattern)
