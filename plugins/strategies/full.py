"""``full``: every parameter trains."""
from __future__ import annotations

from thawkit import Phase, Strategy, hookimpl


class Full(Strategy):
    name = "full"
    description = "Everything trains (full fine-tuning)."

    def phases(self, layout, model):
        return [Phase(0, layout.params_of(layout.all_blocks), "all")]


@hookimpl
def thawkit_register_strategies(register):
    register(Full)
