"""``bitfit``: only biases and the head train (BitFit, Ben Zaken et al. 2022)."""
from __future__ import annotations

from thawkit import Phase, Strategy, hookimpl


class BitFit(Strategy):
    name = "bitfit"
    description = "Every bias and the head train; all other weights are frozen."

    def phases(self, layout, model):
        biases = [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1].endswith("bias")]
        return [Phase(0, set(biases) | set(layout.head.params), "biases + head")]


@hookimpl
def thawkit_register_strategies(register):
    register(BitFit)
