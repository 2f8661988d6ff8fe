"""``check_optimizer`` and ``check_schedule``: optimizer and schedule factories against the
contracts of ``thawkit_register_optimizers`` and ``thawkit_register_schedules``."""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .models import same, tiny_neck
from .report import Report

if TYPE_CHECKING:
    import torch

OPTIMIZER = "factory(param_groups, **kwargs) returns a torch.optim.Optimizer"
GROUPS = ("the optimizer holds the groups as given: same order, parameters, names, lr and "
          "weight_decay (kwargs are defaults only)")
FROZEN = "a step leaves every parameter without a gradient untouched (lr = 0 is not frozen)"
MOVES = "a step moves the parameters that have a gradient"
RESUME = "an optimizer built again and loaded from state_dict() steps exactly like the original"
SCHEDULER = ("factory(optimizer, *, epochs, steps_per_epoch, warmup_epochs, **params) returns a "
             "scheduler with step(), state_dict() and load_state_dict()")
ATTRS = "factory.interval is 'step' or 'epoch', and factory.Params a pydantic model, when present"
FACTOR = ("every step scales every group's own initial lr by one common factor, finite and >= 0, "
          "and keeps the number of groups")
SCHEDULE_RESUME = "a scheduler restored from state_dict() continues with exactly the same lrs"


def _groups(lrs: tuple[float, ...] = (0.1, 0.05, 0.01)) -> tuple[Any, list[dict[str, Any]]]:
    """A small model under gradual unfreezing and its named groups (some parameters frozen)."""
    import thawkit

    adapted = thawkit.adapt(tiny_neck(), "gradual", num_classes=3,
                            pm=thawkit.get_plugin_manager(entrypoints=False))
    groups = adapted.param_groups("sgd", lr=lrs[0], weight_decay=0.1, layer_decay=0.5)
    return adapted.model, groups


def _saved(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` through torch.save and torch.load, as a resume reads it (in memory, load_state_dict
    would share the original's tensors)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _step(model: Any, optimizer: Any, seed: int = 0) -> None:
    import torch

    x = torch.randn(4, 12, generator=torch.Generator().manual_seed(seed))
    optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    optimizer.step()


def check_optimizer(factory: Callable[..., Any], *, name: str = "checked",
                    kwargs: dict[str, Any] | None = None, raises: bool = True) -> Report:
    """Check an optimizer factory with thawkit's named groups, a frozen part and a resume.

    ``kwargs``: extra arguments the factory is called with (``momentum=0.9``...).

    Example::

        def test_my_optimizer():
            check_optimizer(sgd_nesterov, name="sgd-nesterov")
    """
    import torch

    report = Report()
    subject = f"optimizer {name!r}"
    kwargs = {"lr": 0.1, "weight_decay": 0.1, **(kwargs or {})}
    with report.checking(subject, "returns an optimizer", OPTIMIZER) as c:
        model, groups = _groups()
        optimizer = factory(groups, **kwargs)
        if not isinstance(optimizer, torch.optim.Optimizer):
            c.fail(f"factory returned {type(optimizer).__name__}")
    if not c.passed:
        return report.raise_for_failures() if raises else report
    with report.checking(subject, "keeps the groups", GROUPS) as c:
        got = optimizer.param_groups
        if len(got) != len(groups):
            c.fail(f"it has {len(got)} groups, given {len(groups)}")
        for mine, theirs in zip(groups, got):
            if [id(p) for p in mine["params"]] != [id(p) for p in theirs["params"]]:
                c.fail(f"group {mine['name']!r} holds other parameters")
            for key in ("name", "lr", "weight_decay"):
                if theirs.get(key) != mine[key]:
                    c.fail(f"group {mine['name']!r} has {key} {theirs.get(key)!r}, given {mine[key]!r}")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    thawed = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with report.checking(subject, "leaves frozen parameters untouched", FROZEN) as c:
        for seed in range(2):
            _step(model, optimizer, seed)
        now = dict(model.named_parameters())
        moved = [n for n, t in frozen.items() if not same(t, now[n])]
        if moved:
            c.fail(f"two steps changed {', '.join(moved[:5])}, which have no gradient")
    with report.checking(subject, "moves the trainable parameters", MOVES) as c:
        if all(same(t, now[n]) for n, t in thawed.items()):
            c.fail("two steps changed no parameter")
    with report.checking(subject, "resumes from state_dict()", RESUME) as c:
        copy_model, copy_groups = _groups()
        copy_model.load_state_dict(model.state_dict())
        restored = factory(copy_groups, **kwargs)
        restored.load_state_dict(_saved(optimizer.state_dict()))
        _step(model, optimizer, 7)
        _step(copy_model, restored, 7)
        mine, theirs = dict(model.named_parameters()), dict(copy_model.named_parameters())
        off = [n for n in mine if not same(mine[n], theirs[n])]
        if off:
            c.fail(f"after one more step, the restored copy differs in {', '.join(off[:5])}")
    return report.raise_for_failures() if raises else report


def _scheduled_optimizer(lrs: tuple[float, ...]) -> torch.optim.Optimizer:
    import torch

    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr, "name": f"g{i}"}
                            for i, lr in enumerate(lrs)], lr=lrs[0], momentum=0.9)


def _advance(optimizer: Any, scheduler: Any) -> list[float]:
    optimizer.step()
    if "metrics" in inspect.signature(scheduler.step).parameters:
        scheduler.step(1.0)  # a loss that never improves
    else:
        scheduler.step()
    return [g["lr"] for g in optimizer.param_groups]


def check_schedule(factory: Callable[..., Any], *, name: str = "checked",
                   params: dict[str, Any] | None = None, epochs: int = 6, steps_per_epoch: int = 3,
                   warmup_epochs: float = 1.0, raises: bool = True) -> Report:
    """Check a schedule factory on three groups with different lrs, through a whole run and a
    resume halfway.

    Example::

        def test_my_schedule():
            check_schedule(exponential, name="exponential", params={"gamma": 0.9})
    """
    from pydantic import BaseModel

    report = Report()
    subject = f"schedule {name!r}"
    lrs = (1.0, 0.5, 0.1)
    build = {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "warmup_epochs": warmup_epochs,
             **(params or {})}
    with report.checking(subject, "has valid interval and Params", ATTRS) as c:
        interval = getattr(factory, "interval", "step")
        if interval not in ("step", "epoch"):
            c.fail(f"interval is {interval!r}")
        model = getattr(factory, "Params", None)
        if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
            c.fail(f"Params is {model!r}")
    total = epochs * steps_per_epoch if interval == "step" else epochs
    with report.checking(subject, "returns a scheduler", SCHEDULER) as c:
        optimizer = _scheduled_optimizer(lrs)
        scheduler = factory(optimizer, **build)
        for method in ("step", "state_dict", "load_state_dict"):
            if not callable(getattr(scheduler, method, None)):
                c.fail(f"the scheduler ({type(scheduler).__name__}) has no {method}()")
    if not c.passed:
        return report.raise_for_failures() if raises else report
    seen = [[g["lr"] for g in optimizer.param_groups]]
    with report.checking(subject, "scales every group by one factor", FACTOR) as c:
        for step in range(total):
            now = _advance(optimizer, scheduler)
            seen.append(now)
            if len(now) != len(lrs):
                c.fail(f"after step {step + 1} the optimizer has {len(now)} groups")
            factors = [lr / base for lr, base in zip(now, lrs)]
            if not all(math.isfinite(f) and f >= 0 for f in factors):
                c.fail(f"after step {step + 1} the lrs are {now}")
            if max(factors) - min(factors) > 1e-9 * max(1.0, max(factors)):
                c.fail(f"after step {step + 1} the groups' lrs are {now} for initial {list(lrs)}: "
                       "not one common factor")
    with report.checking(subject, "resumes exactly", SCHEDULE_RESUME) as c:
        first = _scheduled_optimizer(lrs)
        original = factory(first, **build)
        half = total // 2
        for _ in range(half):
            _advance(first, original)
        second = _scheduled_optimizer(lrs)
        restored = factory(second, **build)
        second.load_state_dict(_saved(first.state_dict()))
        restored.load_state_dict(_saved(original.state_dict()))
        for step in range(half, total):
            a, b = _advance(first, original), _advance(second, restored)
            if a != b:
                c.fail(f"at step {step + 1} the original gives {a}, the restored copy {b}")
    return report.raise_for_failures() if raises else report
