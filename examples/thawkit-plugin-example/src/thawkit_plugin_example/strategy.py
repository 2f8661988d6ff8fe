"""The ``budget`` strategy: thaw from the head down while the trainable share fits a budget."""
from __future__ import annotations

import thawkit
from pydantic import Field
from torch import nn


class BudgetParams(thawkit.StrategyParams):
    fraction: float = Field(0.25, gt=0, le=1, description="Share of all parameters that may train.")
    min_blocks: int = Field(0, ge=0, description="Blocks that train whatever the budget says.")


class Budget(thawkit.Strategy):
    name = "budget"
    description = "Thaw blocks from the head down while the trainable share stays within `fraction`."
    Params = BudgetParams

    def phases(self, layout: thawkit.Layout, model: nn.Module) -> list[thawkit.Phase]:
        if self.params.min_blocks > len(layout.blocks):
            raise thawkit.ConfigError(
                f"strategy.min_blocks: {self.params.min_blocks} is more than the {len(layout.blocks)} "
                f"blocks of this model ({', '.join(b.name for b in layout.blocks)})")
        # sizes from shapes only: the model may be on the meta device (thawkit plan)
        size = {n: p.numel() for n, p in model.named_parameters()}
        budget = self.params.fraction * sum(size.values())
        head, *rest = layout.thaw_order  # [head, neck] always trains, then the last block, ...
        chosen = list(head)
        for i, unit in enumerate(rest):
            within = sum(size[p] for block in chosen + unit for p in block.params) <= budget
            if i >= self.params.min_blocks and not within:
                break
            chosen += unit
        return [thawkit.Phase(0, layout.params_of(chosen), "+".join(b.name for b in chosen))]
