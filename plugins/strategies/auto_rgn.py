"""``auto-rgn``: every block trains, each at a rate in proportion to its relative gradient norm.

Auto-RGN (Lee et al., ICLR 2023, "Surgical Fine-Tuning Improves Adaptation to Distribution
Shifts"): a block's relative gradient norm is the norm of its loss gradient over the norm of its
weights; normalised so that the largest is 1, it multiplies the block's learning rate. The norms
are measured again in every epoch from ``batches`` batches of the training data, so the rates
follow what the blocks want as training goes.

In ``thawkit train`` (or any loop that emits the training plugin's events) gradient hooks
measure the norms on the first ``batches`` steps of every epoch, from the training's own
gradients; at the epoch's end :func:`update_rates` rescales each optimizer group for the next
epoch, keeping the factor in the group (``auto_rgn``) and in the schedule's base rates, so a
checkpoint holds them and a resume goes on with the same rates. The first epoch trains at the
recipe's rates (nothing is measured yet).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import Field

from thawkit import Phase, Strategy, StrategyParams, hookimpl

#: the smallest factor a block gets (a block with no gradient still keeps a rate)
FLOOR = 1e-3


class AutoRGNParams(StrategyParams):
    batches: int = Field(5, ge=1, description="Batches of each epoch the relative gradient norms "
                         "are measured on (its first ones).")


class AutoRGN(Strategy):
    name = "auto-rgn"
    description = "Everything trains; each block's lr follows its relative gradient norm, per epoch."
    Params = AutoRGNParams

    def phases(self, layout, model):
        return [Phase(0, layout.params_of(layout.all_blocks), "all, rates by relative gradient norm")]

    def describe(self, model):
        return ([f"per-block rates x relative gradient norm (largest 1), measured on the first "
                 f"{self.params.batches} batches of each epoch, applied from the next"], {})


def relative_gradient_norms(model: Any, layout: Any, batches: Iterable[Any],
                            forward: Any = None) -> dict[str, float]:
    """Per block, the root mean square over ``batches`` (of ``(inputs, labels)``) of the norm of
    the loss gradient, over the norm of its weights, normalised so that the largest is 1.
    Gradients are computed for every parameter and cleared after; the weights do not change."""
    import torch

    params = dict(model.named_parameters())
    saved = {n: p.requires_grad for n, p in params.items()}
    squares = dict.fromkeys(params, 0.0)
    count = 0
    forward = forward or model
    try:
        for p in params.values():
            p.requires_grad_(True)
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(forward(x).float(), y).backward()
            for n, p in params.items():
                if p.grad is not None:
                    squares[n] += float(p.grad.detach().float().pow(2).sum())
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(saved[n])
    return normalised(squares, count, params, layout)


def normalised(squares: dict[str, float], count: int, params: dict[str, Any],
               layout: Any) -> dict[str, float]:
    """Relative gradient norms per block from each parameter's summed squared gradient norms
    over ``count`` batches, divided by the largest."""
    out = {}
    for block in layout.all_blocks:
        if not block.params:
            continue
        g = (sum(squares.get(n, 0.0) for n in block.params) / max(count, 1)) ** 0.5
        w = sum(float(params[n].detach().float().pow(2).sum()) for n in block.params) ** 0.5
        out[block.name] = g / w if w > 0 else 0.0
    top = max(out.values(), default=0.0)
    return {k: (v / top if top > 0 else 0.0) for k, v in out.items()}


class GradientMeter:
    """Squared gradient norms of every parameter over the first ``batches`` backward passes of
    an epoch, gathered by gradient hooks while the run trains (nothing extra is computed)."""

    def __init__(self, model: Any, batches: int):
        self.model, self.batches = model, batches
        self.params = dict(model.named_parameters())
        self.reset()
        self.handles = [p.register_post_accumulate_grad_hook(self._hook(n))
                        for n, p in self.params.items() if p.requires_grad]

    def _hook(self, name: str) -> Any:
        def hook(p: Any) -> None:
            if self.seen[name] < self.batches and p.grad is not None:
                self.squares[name] += float(p.grad.detach().float().pow(2).sum())
                self.seen[name] += 1
        return hook

    def reset(self) -> None:
        self.squares = dict.fromkeys(self.params, 0.0)
        self.seen = dict.fromkeys(self.params, 0)

    def norms(self, layout: Any) -> dict[str, float]:
        count = max(self.seen.values(), default=0)
        return normalised(self.squares, count, self.params, layout) if count else {}

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


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


# The rates follow the run: measured on the first batches of every epoch (the training's own
# gradients), applied from the next epoch on. The training plugin's events drive it.
@hookimpl
def thawkit_run_start(run):
    if isinstance(run.adapted.strategy, AutoRGN):
        run.adapted.strategy.meter = GradientMeter(run.model, run.adapted.strategy.params.batches)


@hookimpl
def thawkit_epoch_end(run, epoch, metrics):
    meter = getattr(run.adapted.strategy, "meter", None)
    if isinstance(run.adapted.strategy, AutoRGN) and meter is not None:
        norms = meter.norms(run.adapted.layout)
        meter.reset()
        if norms:
            update_rates(run.adapted, run.optimizer, run.scheduler, norms)


@hookimpl
def thawkit_run_end(run, status):
    _close(run)


@hookimpl
def thawkit_run_failed(run, error):
    _close(run)


def _close(run) -> None:
    meter = getattr(run.adapted.strategy, "meter", None)
    if meter is not None:
        meter.close()
        run.adapted.strategy.meter = None


@hookimpl
def thawkit_register_strategies(register):
    register(AutoRGN)
