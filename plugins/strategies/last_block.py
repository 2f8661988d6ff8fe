"""``last-block``: the last N blocks, the neck and the head train."""
from __future__ import annotations

from pydantic import Field

from thawkit import ConfigError, Phase, Strategy, StrategyParams, hookimpl


class LastBlockParams(StrategyParams):
    blocks: int = Field(1, ge=0, description="How many of the last blocks train (0: neck and head only).")


class LastBlock(Strategy):
    name = "last-block"
    description = "The last N blocks, the neck and the head train."
    Params = LastBlockParams

    def phases(self, layout, model):
        n = self.params.blocks
        return [Phase(0, last_blocks(layout, n, "or the 'full' strategy"), f"last {n} block(s)")]


def last_blocks(layout, n: int, otherwise: str) -> list[str]:
    """The parameters of the last ``n`` blocks, the neck and the head; more blocks than the model
    has is an error naming ``strategy.blocks`` (``otherwise``: what to do instead)."""
    if n > len(layout.blocks):
        raise ConfigError(f"strategy.blocks: {n} is more than the {len(layout.blocks)} blocks "
                          f"of this model ({', '.join(b.name for b in layout.blocks)}); use "
                          f"blocks <= {len(layout.blocks)} {otherwise}")
    return [p for unit in layout.thaw_order[: n + 1] for b in unit for p in b.params]


@hookimpl
def thawkit_register_strategies(register):
    register(LastBlock)
