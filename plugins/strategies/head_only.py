"""``head-only``: only the new head trains (a linear probe)."""
from __future__ import annotations

from thawkit import Phase, Strategy, hookimpl


class HeadOnly(Strategy):
    name = "head-only"
    description = "Only the head trains (linear probe); the backbone is frozen."

    def phases(self, layout, model):
        return [Phase(0, layout.head.params, "head")]


@hookimpl
def thawkit_register_strategies(register):
    register(HeadOnly)
