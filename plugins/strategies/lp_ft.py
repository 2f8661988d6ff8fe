"""``lp-ft``: a linear probe first, then fine-tuning at a lower rate for the backbone.

LP-FT (Kumar et al., ICLR 2022, "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution"): training the head alone first means the backbone
starts fine-tuning under a head that already fits, so the gradients of a random head do not
distort the pretrained features. Two phases: the head alone for ``probe_epochs`` epochs,
then the whole model (or the last ``blocks`` blocks, the neck and the head), the backbone at
``backbone_lr_scale`` times its rate. The optimizer holds every parameter from the start (as
for every strategy), so the switch changes only which parameters train.
"""
from __future__ import annotations

from pydantic import Field

from thawkit import Phase, Strategy, StrategyParams, hookimpl

from .last_block import last_blocks


class LPFTParams(StrategyParams):
    probe_epochs: int = Field(1, ge=1, description="Epochs of head-only training (the linear probe) "
                              "before fine-tuning.")
    blocks: int | None = Field(None, ge=1, description="Fine-tune only the last N blocks (with the "
                               "neck and the head); null: everything.")
    backbone_lr_scale: float = Field(0.1, gt=0, le=1, description="Factor on the learning rate of "
                                     "every parameter outside the head (with layer decay, on top of it).")


class LPFT(Strategy):
    name = "lp-ft"
    description = "A linear probe for probe_epochs, then fine-tuning with the backbone's lr scaled."
    Params = LPFTParams

    def phases(self, layout, model):
        n = self.params.blocks
        tuned = layout.params_of(layout.all_blocks) if n is None else \
            last_blocks(layout, n, "or leave blocks out to fine-tune everything")
        return [Phase(0, layout.head.params, "probe: head"),
                Phase(self.params.probe_epochs, tuned,
                      "fine-tune: " + ("all" if n is None else f"last {n} block(s)"))]

    def lr_scales(self, layout, model):
        head = set(layout.head.params)
        return {name: self.params.backbone_lr_scale for name, _ in model.named_parameters()
                if name not in head}


@hookimpl
def thawkit_register_strategies(register):
    register(LPFT)
