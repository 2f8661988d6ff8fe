"""Built-in learning-rate schedules: constant, cosine, linear, step, onecycle and plateau.

Every schedule scales each parameter group's *own* learning rate by the same
factor, so the per-block multipliers that thawkit puts into the groups
(layer-wise decay, ``head_lr_mult``, ``optimizer.lrs``) hold at every step; a
block thawed by a gradual strategy enters at the scheduled lr of that moment,
never at its initial one, because every group is scheduled from the start.

A factory is called as ``factory(optimizer, epochs=, steps_per_epoch=,
warmup_epochs=, **params)``; ``factory.Params`` validates ``params`` (the
recipe's ``schedule`` section minus ``name`` and ``warmup_epochs``) and
``factory.interval`` says whether the loop steps it after every optimizer step
(``"step"``) or once per epoch (``"epoch"``, given the validation loss when it
is a ``ReduceLROnPlateau``).

Warmup is linear over ``round(warmup_epochs * steps_per_epoch)`` steps ``W``:
step ``s < W`` runs at ``lr * (s + 1) / (W + 1)`` and step ``W`` at the full lr.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from thawkit import ConfigError, PluginError, format_validation_error, hookimpl

if TYPE_CHECKING:
    import torch
    from thawkit import Registry, ThawkitPluginManager

# torch is imported when a schedule is built: recipes are validated against this module torch-free.


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CosineParams(_Params):
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr as a fraction of each "
                                "group's own lr.")


class LinearParams(CosineParams):
    pass


class StepParams(_Params):
    step_size: int | None = Field(None, gt=0, description="Epochs between decays (default: a "
                                  "third of the run).")
    milestones: list[int] | None = Field(None, description="Epochs at which to decay, instead of "
                                         "step_size.")
    gamma: float = Field(0.1, gt=0, le=1, description="Factor applied at each decay.")


class OneCycleParams(_Params):
    pct_start: float | None = Field(None, gt=0, lt=1, description="Fraction of the run spent "
                                    "rising (default 0.3, or warmup_epochs / epochs).")
    div_factor: float = Field(25.0, gt=0, description="Start lr = lr / div_factor.")
    final_div_factor: float = Field(1e4, gt=0, description="End lr = start lr / final_div_factor.")
    anneal_strategy: Literal["cos", "linear"] = "cos"
    cycle_momentum: bool = Field(False, description="Also cycle momentum / beta1 (off: keep the "
                                 "optimizer's).")


class PlateauParams(_Params):
    factor: float = Field(0.1, gt=0, lt=1, description="Multiply every group's lr by this.")
    patience: int = Field(3, ge=0, description="Epochs without val-loss improvement before a cut.")
    threshold: float = Field(1e-4, ge=0)
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Floor as a fraction of each "
                                "group's own lr (keeps the multipliers at the floor too).")


Factory = Callable[..., Any]


def _validated(name: str, params_model: type[_Params], params: dict[str, Any]) -> Any:
    try:
        return params_model.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where=f"schedule {name!r}",
                                                  prefix=("schedule",), model=params_model)) from None


def _check_lengths(name: str, epochs: int, steps_per_epoch: int, warmup_epochs: float) -> tuple[int, int]:
    if epochs < 1 or steps_per_epoch < 1:
        raise ConfigError(f"schedule {name!r}: needs at least one epoch and one step per epoch "
                          f"(got epochs={epochs}, steps_per_epoch={steps_per_epoch})")
    if warmup_epochs < 0:
        raise ConfigError(f"schedule.warmup_epochs must be >= 0, got {warmup_epochs}")
    total = epochs * steps_per_epoch
    warmup = round(warmup_epochs * steps_per_epoch)
    if warmup >= total:
        raise ConfigError(f"schedule.warmup_epochs ({warmup_epochs}) must be shorter than the run "
                          f"(train.epochs = {epochs})")
    return total, warmup


def _lambda_schedule(optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> Any:
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, factor)


def _with_warmup(warmup: int, after: Callable[[int], float]) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return after(step)
    return factor


def _register(name: str, params_model: type[_Params], interval: str, description: str):
    def wrap(build: Callable[..., Any]) -> Factory:
        def factory(optimizer, *, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0,
                    **params: Any):
            p = _validated(name, params_model, params)
            total, warmup = _check_lengths(name, epochs, steps_per_epoch, warmup_epochs)
            return build(optimizer, p, epochs=epochs, steps_per_epoch=steps_per_epoch,
                         total=total, warmup=warmup, warmup_epochs=warmup_epochs)

        factory.Params = params_model
        factory.interval = interval
        factory.description = description
        factory.__name__ = f"{name}_schedule"
        factory.__doc__ = description
        _FACTORIES[name] = factory
        return factory
    return wrap


_FACTORIES: dict[str, Factory] = {}


@_register("constant", _Params, "step", "Constant lr (after the optional warmup).")
def _constant(optimizer, p, *, total, warmup, **_):
    return _lambda_schedule(optimizer, _with_warmup(warmup, lambda s: 1.0))


@_register("cosine", CosineParams, "step",
           "Cosine decay from lr to lr * min_lr_ratio over the run, after the optional warmup.")
def _cosine(optimizer, p, *, total, warmup, **_):
    lo = p.min_lr_ratio

    def after(step: int) -> float:
        t = min(1.0, (step - warmup) / (total - warmup))
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * t))
    return _lambda_schedule(optimizer, _with_warmup(warmup, after))


@_register("linear", LinearParams, "step",
           "Linear decay from lr to lr * min_lr_ratio over the run, after the optional warmup.")
def _linear(optimizer, p, *, total, warmup, **_):
    lo = p.min_lr_ratio

    def after(step: int) -> float:
        t = min(1.0, (step - warmup) / (total - warmup))
        return lo + (1.0 - lo) * (1.0 - t)
    return _lambda_schedule(optimizer, _with_warmup(warmup, after))


@_register("step", StepParams, "step",
           "Multiply the lr by gamma every step_size epochs (or at the given milestone epochs).")
def _step(optimizer, p, *, epochs, steps_per_epoch, warmup, **_):
    if p.step_size is not None and p.milestones is not None:
        raise ConfigError("schedule: give step_size or milestones, not both")
    if p.milestones is not None:
        bad = [m for m in p.milestones if not 0 < m < epochs]
        if bad or sorted(p.milestones) != p.milestones:
            raise ConfigError(f"schedule.milestones must be increasing epochs between 1 and "
                              f"{epochs - 1} (train.epochs = {epochs}); got {p.milestones}")
        milestones = list(p.milestones)
    else:
        size = p.step_size or max(1, epochs // 3)
        milestones = list(range(size, epochs, size))

    def after(step: int) -> float:
        epoch = step // steps_per_epoch
        return p.gamma ** sum(1 for m in milestones if epoch >= m)
    return _lambda_schedule(optimizer, _with_warmup(warmup, after))


@_register("onecycle", OneCycleParams, "step",
           "One-cycle: rise from lr/div_factor to lr, then anneal far below (Smith's 1cycle); "
           "warmup_epochs sets the rising part.")
def _onecycle(optimizer, p, *, epochs, total, warmup, warmup_epochs, **_):
    from torch.optim.lr_scheduler import OneCycleLR

    if warmup and p.pct_start is not None:
        raise ConfigError("schedule: onecycle takes warmup_epochs or pct_start, not both")
    pct = warmup / total if warmup else (p.pct_start if p.pct_start is not None else 0.3)
    return OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
                      pct_start=pct, anneal_strategy=p.anneal_strategy,
                      cycle_momentum=p.cycle_momentum, div_factor=p.div_factor,
                      final_div_factor=p.final_div_factor)


def _plateau_class():
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    class WarmupPlateau(ReduceLROnPlateau):
        """ReduceLROnPlateau on the validation loss, after a linear warmup of whole epochs."""

        def __init__(self, optimizer, *, warmup_epochs: int, **kwargs: Any):
            self.peak_lrs = [g["lr"] for g in optimizer.param_groups]
            self.warmup_epochs = warmup_epochs
            self.epochs_seen = 0
            super().__init__(optimizer, **kwargs)
            self._warm(0)

        def _warm(self, epoch: int) -> None:
            if epoch <= self.warmup_epochs and self.warmup_epochs:
                f = (epoch + 1) / (self.warmup_epochs + 1)
                for group, peak in zip(self.optimizer.param_groups, self.peak_lrs):
                    group["lr"] = peak * f
                self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

        def step(self, metrics: Any, epoch: Any = None) -> None:  # type: ignore[override]
            self.epochs_seen += 1
            if self.epochs_seen <= self.warmup_epochs:
                self._warm(self.epochs_seen)
                return
            super().step(metrics)

    return WarmupPlateau


@_register("plateau", PlateauParams, "epoch",
           "Cut every group's lr by factor when the validation loss stops improving; warmup_epochs "
           "is rounded up to whole epochs.")
def _plateau(optimizer, p, *, warmup_epochs, **_):
    peaks = [g["lr"] for g in optimizer.param_groups]
    return _plateau_class()(
        optimizer, warmup_epochs=math.ceil(warmup_epochs), mode="min", factor=p.factor,
        patience=p.patience, threshold=p.threshold, threshold_mode=p.threshold_mode,
        cooldown=p.cooldown, min_lr=[lr * p.min_lr_ratio for lr in peaks])


def read_schedule(name: str, factory: Any) -> tuple[str, Any]:
    """``register(name, factory)``'s arguments, checked when the plugin registers them."""
    if not callable(factory):
        raise PluginError(f"schedule {name!r} is {factory!r}, which is not callable")
    return name, factory


def schedule_registry(pm: ThawkitPluginManager) -> Registry:
    """Schedule factories by name, from every plugin's ``thawkit_register_schedules``."""
    return pm.registry("thawkit_register_schedules", "schedule", read_schedule)


def build_scheduler(section: Any, optimizer: torch.optim.Optimizer, *, pm: ThawkitPluginManager,
                    epochs: int, steps_per_epoch: int, where: str = "") -> tuple[Any, str]:
    """The scheduler a schedule section (``recipe.schedule``) names, built over ``optimizer``, and
    its interval (``"step"`` or ``"epoch"``). One builder for ``thawkit train``, ``thawkit probe``
    and the Lightning helper; a plugin's error while building names the plugin."""
    registry = schedule_registry(pm)
    factory = registry.get(section.name, where=f"{where}: schedule.name" if where else "schedule.name")
    with pm.guard(registry.entries[section.name].plugin, f"schedule {section.name!r}"):
        scheduler = factory(optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch,
                            warmup_epochs=section.warmup_epochs, **section.params)
    interval = getattr(factory, "interval", "step")
    if interval not in ("step", "epoch"):
        raise ConfigError(f"schedule {section.name!r}: interval must be 'step' or 'epoch', not {interval!r}")
    return scheduler, interval


def watches_metric(scheduler: Any) -> bool:
    """A ``ReduceLROnPlateau`` (the ``plateau`` schedule): it steps on a metric, the validation loss."""
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    return isinstance(scheduler, ReduceLROnPlateau)


def end_epoch(scheduler: Any, interval: str, val_loss: float) -> None:
    """An epoch-interval scheduler's step at the end of an epoch (given the validation loss when it
    watches one); a step-interval scheduler has stepped after each optimizer step already."""
    if interval == "epoch":
        if watches_metric(scheduler):
            scheduler.step(val_loss)
        else:
            scheduler.step()


@hookimpl
def thawkit_register_schedules(register: Callable[..., None]) -> None:
    for name, factory in _FACTORIES.items():
        register(name, factory)
