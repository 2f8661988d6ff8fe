"""``auto-rgn``: every block trains, each at a rate in proportion to its relative gradient norm.

Auto-RGN (Lee et al., ICLR 2023, "Surgical Fine-Tuning Improves Adaptation to Distribution
Shifts"): a block's relative gradient norm is the norm of its loss gradient over the norm of its
weights; normalised so that the largest is 1, it multiplies the block's learning rate. The norms
are measured again at the start of every epoch from ``batches`` batches of the training data, so
the rates follow what the blocks want as training goes.

The loop measures them: :func:`update_rates` takes the optimizer and the schedule and rescales
each group, keeping the factor in the group (``auto_rgn``) and in the schedule's base rates, so a
checkpoint holds them and a resume goes on with the same rates. ``thawkit search`` calls it at
every epoch start. Before the first measurement every block trains at the recipe's rates.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import Field

from thawkit import Phase, Strategy, StrategyParams, hookimpl

#: the smallest factor a block gets (a block with no gradient still keeps a rate)
FLOOR = 1e-3


class AutoRGNParams(StrategyParams):
    batches: int = Field(5, ge=1, description="Batches the relative gradient norms are measured on "
                         "at the start of every epoch.")


class AutoRGN(Strategy):
    name = "auto-rgn"
    description = "Everything trains; each block's lr follows its relative gradient norm, per epoch."
    Params = AutoRGNParams

    def phases(self, layout, model):
        return [Phase(0, layout.params_of(layout.all_blocks), "all, rates by relative gradient norm")]

    def describe(self, model):
        return ([f"per-block rates x relative gradient norm (largest 1), measured on "
                 f"{self.params.batches} batches at each epoch start"], {})


def relative_gradient_norms(model: Any, layout: Any, batches: Iterable[Any],
                            forward: Any = None) -> dict[str, float]:
    """Per block, the norm of the loss gradient (summed over ``batches`` of ``(inputs, labels)``)
    over the norm of its weights, normalised so that the largest is 1. Gradients are computed
    for every parameter and cleared after; the weights do not change."""
    import torch

    params = dict(model.named_parameters())
    saved = {n: p.requires_grad for n, p in params.items()}
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    forward = forward or model
    try:
        for p in params.values():
            p.requires_grad_(True)
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(forward(x).float(), y).backward()
            for n, p in params.items():
                if p.grad is not None:
                    grads[n] += p.grad.detach()
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(saved[n])
    out = {}
    for block in layout.all_blocks:
        if not block.params:
            continue
        g = sum(float(grads[n].float().pow(2).sum()) for n in block.params) ** 0.5
        w = sum(float(params[n].detach().float().pow(2).sum()) for n in block.params) ** 0.5
        out[block.name] = g / w if w > 0 else 0.0
    top = max(out.values(), default=0.0)
    return {k: (v / top if top > 0 else 0.0) for k, v in out.items()}


def update_rates(adapted: Any, optimizer: Any, scheduler: Any, norms: dict[str, float]) -> None:
    """Give every optimizer group its block's factor ``norms[block]`` (at least :data:`FLOOR`),
    replacing the factor it had: the group's rate, its initial rate and the schedule's base rate
    change by the same ratio, so the schedule goes on from the new rates."""
    block_of = adapted.layout.block_of()
    name_of = {id(p): n for n, p in adapted.model.named_parameters()}
    base_lrs = getattr(scheduler, "base_lrs", None)
    for i, group in enumerate(optimizer.param_groups):
        block = block_of[name_of[id(group["params"][0])]]
        new = max(norms.get(block, 1.0), FLOOR)
        ratio = new / group.get("auto_rgn", 1.0)
        group["auto_rgn"] = new
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
        if base_lrs is not None:
            base_lrs[i] *= ratio


@hookimpl
def thawkit_register_strategies(register):
    register(AutoRGN)
