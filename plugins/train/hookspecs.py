"""Hooks the training plugin adds to thawkit (through ``thawkit_add_hookspecs``)."""
from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("thawkit")


@hookspec
def thawkit_register_schedules(register: Callable[..., None]) -> None:
    """Register learning-rate schedules for ``thawkit train``.

    Parameters:
        register: call ``register(name, factory, replace=False)`` where
            ``factory(optimizer, *, epochs: int, steps_per_epoch: int, warmup_epochs: float,
            **params)`` returns a ``torch.optim.lr_scheduler`` object (``warmup_epochs``
            is the recipe's ``schedule.warmup_epochs``, passed to every schedule). An optional attribute
            ``factory.Params`` (pydantic model) validates ``params``; an optional
            ``factory.interval`` is ``"step"`` (default) or ``"epoch"``.

    Returns: nothing (all implementations are called).

    Contract: the scheduler scales every group's *own* initial lr by one common factor
    at each step (thawkit's per-block multipliers hold), keeps the lr finite and >= 0,
    never adds or removes groups, and resumes exactly from its ``state_dict()``.
    ``thawkit.plugins.testing.check_schedule`` checks it.
    """
