"""``check_strategy``: a strategy class against the contract of :class:`thawkit.Strategy`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .models import (ModelCase, ModelLike, as_case, call, changed, default_models, first_tensor,
                     snapshot, to_meta)
from .report import Check, Report

if TYPE_CHECKING:
    from thawkit import Adapted, Phase, Strategy, ThawkitPluginManager

CLASS = "a subclass of thawkit.Strategy with a non-empty name and description"
PARAMS = "Params subclasses thawkit.StrategyParams (unknown fields and a bad norm are refused)"
IMPLEMENTS = "a strategy overrides phases(layout, model) -> list[thawkit.Phase]"
VALID = "the parameters the author lists as valid validate: strategy_instance() builds the strategy"
REFUSES = ("bad parameters are a thawkit.ConfigError naming the field (strategy.<field>), when "
           "validated or at the latest when adapting")
RETURNS = "phases() returns a non-empty list of thawkit.Phase"
PURE = "phases() reads names and shapes only and changes nothing in the model"
SAME = "phases() gives the same phases for the same model every time (plans, resume, DDP ranks)"
EPOCHS = "the first phase starts at epoch 0 and each later phase at a later epoch"
KNOWN = "phases name only parameters of the model (model.named_parameters())"
CUMULATIVE = "phases are cumulative: each includes every parameter of the phase before"
HEAD = "the head always trains: every phase includes layout.head.params"
META = "phases() works on the meta device, and gives the same phases there"
SCALES = ("lr_scales() returns {parameter name: factor} for parameters of the model only, each "
          "factor a finite number > 0")
ADAPT = "thawkit.adapt() accepts the strategy on the model"
FROZEN = ("training in train mode moves no frozen parameter, and no running statistic of a "
          "frozen normalisation layer under norm='frozen' or 'affine'")


def check_strategy(strategy: type[Strategy], models: Sequence[ModelLike] | None = None, *,
                   params: Sequence[dict[str, Any]] = ({},), bad_params: Sequence[dict[str, Any]] = (),
                   pm: ThawkitPluginManager | None = None, steps: int = 2,
                   raises: bool = True) -> Report:
    """Check ``strategy`` (a class) on ``models`` with each of ``params``.

    ``models``: :class:`ModelCase` objects, ``"source:name"`` specs, modules or functions
    building one (default: :func:`default_models`). ``params``: parameter sets that must
    validate; ``bad_params``: sets that must be refused (besides an unknown field and a bad
    ``norm``, always tried). ``pm``: a plugin manager with the layouts the models need (the
    strategy is registered into it when missing); ``steps``: training steps per phase.

    Raises :class:`ContractError` listing every failed check unless ``raises=False``;
    returns the :class:`Report`.

    Example::

        def test_my_strategy():
            check_strategy(TopFraction, params=[{}, {"fraction": 1.0}], bad_params=[{"fraction": 0}])
    """
    import thawkit

    report = Report()
    name = getattr(strategy, "name", None)
    subject = f"strategy {name or getattr(strategy, '__name__', strategy)!r}"
    with report.checking(subject, "is a Strategy with a name and a description", CLASS) as c:
        if not (isinstance(strategy, type) and issubclass(strategy, thawkit.Strategy)):
            c.fail(f"{strategy!r} is not a subclass of thawkit.Strategy")
        if not isinstance(name, str) or not name:
            c.fail(f"its name is {name!r}")
        if not isinstance(strategy.description, str) or not strategy.description.strip():
            c.fail("its description is empty (thawkit strategies shows it)")
    if not c.passed:
        return _finish(report, raises)
    with report.checking(subject, "Params subclasses thawkit.StrategyParams", PARAMS) as c:
        if not (isinstance(strategy.Params, type) and issubclass(strategy.Params, thawkit.StrategyParams)):
            c.fail(f"Params is {strategy.Params!r}")
    with report.checking(subject, "implements phases()", IMPLEMENTS) as c:
        if strategy.phases is thawkit.Strategy.phases:
            c.fail("phases() is the base class's, which raises NotImplementedError")
    if not report.passed:
        return _finish(report, raises)

    pm = _with_strategy(strategy, pm)
    cases = [as_case(m, pm) for m in (models if models is not None else default_models())]
    instances = []
    for values in params:
        with report.checking(subject, f"accepts the parameters {values}", VALID):
            instances.append((values, thawkit.strategy_instance(name, values, pm=pm)))
    for bad in [{"no_such_parameter": 1}, {"norm": "sometimes"}, *bad_params]:
        with report.checking(subject, f"refuses the parameters {bad}", REFUSES) as c:
            _refuses(name, bad, cases[0], pm, c)
    for case in cases:
        for values, instance in instances:
            where = f"{subject} on {case.name}" + (f" with {values}" if values else "")
            _check_on(report, where, instance, case, pm, steps)
    return _finish(report, raises)


def _finish(report: Report, raises: bool) -> Report:
    return report.raise_for_failures() if raises else report


def _with_strategy(strategy: type[Strategy], pm: ThawkitPluginManager | None) -> ThawkitPluginManager:
    import thawkit

    pm = pm or thawkit.get_plugin_manager(entrypoints=False)
    if strategy.name not in pm.strategies or pm.strategies.get(strategy.name) is not strategy:

        class Registers:
            @thawkit.hookimpl
            def thawkit_register_strategies(self, register: Any) -> None:
                register(strategy, replace=True)

        pm.register(Registers(), name=f"checked strategy {strategy.name}")
    return pm


def prepared(case: ModelCase, pm: ThawkitPluginManager,
             instance: Strategy | None = None) -> tuple[Any, Any]:
    """A fresh model of ``case`` with its new head (and what ``instance.prepare`` adds), and its
    layout."""
    import thawkit

    model = case.build()
    if case.num_classes is not None:
        model, layout = thawkit.replace_head(model, case.num_classes, pm=pm)
    else:
        layout = thawkit.describe_layout(model, pm=pm)
    grown = instance.prepare(model, layout) if instance is not None else None
    if grown is not None:
        model, layout = grown, thawkit.describe_layout(grown, pm=pm)
    return model, layout


def _refuses(name: str, bad: dict[str, Any], case: ModelCase, pm: ThawkitPluginManager,
             c: Check) -> None:
    import thawkit

    field = f"strategy.{next(iter(bad))}"
    try:
        instance = thawkit.strategy_instance(name, bad, pm=pm)
    except thawkit.ConfigError as exc:
        if field not in str(exc):
            c.fail(f"refused them, but the message does not name {field}: {exc}")
        return
    model, _ = prepared(case, pm)
    try:
        thawkit.adapt(model, instance, pm=pm)
    except thawkit.ConfigError:
        return
    c.fail(f"accepted them, and adapt() on {case.name} as well")


def _key(phases: list[Phase]) -> list[tuple[int, list[str]]]:
    return [(p.epoch, sorted(p.trainable)) for p in phases]


def _check_on(report: Report, where: str, instance: Strategy, case: ModelCase,
              pm: ThawkitPluginManager, steps: int) -> None:
    import thawkit

    with report.checking(f"model {case.name}", "takes a new head and is described",
                         "the models a strategy is checked on load, take a head and have a layout") as c:
        model, layout = prepared(case, pm, instance)
    if not c.passed:
        return
    before = snapshot(model)
    with report.checking(where, "phases() returns a list of Phase", RETURNS) as c:
        phases = instance.phases(layout, model)
        if not isinstance(phases, list) or not phases or \
                not all(isinstance(p, thawkit.Phase) for p in phases):
            c.fail(f"phases() returned {phases!r}")
    if not c.passed:
        return
    with report.checking(where, "phases() changes nothing", PURE) as c:
        diff = changed(before, model)
        if diff:
            c.fail(f"after phases(), these differ: {', '.join(diff[:6])}")
    with report.checking(where, "phases() is deterministic", SAME) as c:
        again = instance.phases(layout, model)
        if _key(again) != _key(phases):
            c.fail(f"two calls gave {_key(phases)[:2]}... and {_key(again)[:2]}...")
    with report.checking(where, "phase epochs start at 0 and increase", EPOCHS) as c:
        epochs = [p.epoch for p in phases]
        if epochs[0] != 0 or any(b <= a for a, b in zip(epochs, epochs[1:])):
            c.fail(f"the phases start at epochs {epochs}")
    names = {n for n, _ in model.named_parameters()}
    with report.checking(where, "phases name only parameters of the model", KNOWN) as c:
        unknown = sorted({n for p in phases for n in p.trainable} - names)
        if unknown:
            c.fail(f"phases name {', '.join(unknown[:5])}, which the model does not have")
    with report.checking(where, "phases are cumulative", CUMULATIVE) as c:
        for i in range(1, len(phases)):
            lost = sorted(phases[i - 1].trainable - phases[i].trainable)
            if lost:
                c.fail(f"phase {i} (epoch {phases[i].epoch}) re-freezes {', '.join(lost[:5])}")
    with report.checking(where, "the head trains in every phase", HEAD) as c:
        for i, phase in enumerate(phases):
            frozen = sorted(set(layout.head.params) - phase.trainable)
            if frozen:
                c.fail(f"phase {i} (epoch {phase.epoch}) leaves {', '.join(frozen[:5])} frozen")
    with report.checking(where, "lr_scales() names parameters with factors > 0", SCALES) as c:
        scales = instance.lr_scales(layout, model)
        bad = [f"{n}={f!r}" for n, f in dict(scales).items()
               if n not in names or not isinstance(f, (int, float)) or not 0 < f < float("inf")]
        if bad:
            c.fail(f"lr_scales() gave {', '.join(bad[:5])}")
    with report.checking(where, "phases() works on the meta device", META) as c:
        meta = to_meta(model)
        on_meta = instance.phases(thawkit.describe_layout(meta, pm=pm), meta)
        if _key(on_meta) != _key(phases):
            c.fail("on the meta device it gave other phases than on the real model")
    with report.checking(where, "adapt() accepts it", ADAPT) as c:
        adapted = thawkit.adapt(model, instance, pm=pm)
    if not c.passed or not case.infer:
        return
    with report.checking(where, "frozen parameters and statistics stay bit-identical", FROZEN) as c:
        _train(adapted, case, pm, steps, c)


def _train(adapted: Adapted, case: ModelCase, pm: ThawkitPluginManager, steps: int, c: Check) -> None:
    import thawkit

    model = adapted.model
    # momentum and weight decay: they would move a "frozen" parameter that still had a gradient
    optimizer = adapted.optimizer("sgd", lr=0.05, momentum=0.9, weight_decay=0.1)
    x = case.input(model, pm)
    norms = thawkit.norm_modules(model)
    for i, phase in enumerate(adapted.phases):
        adapted.on_epoch_start(phase.epoch)
        model.train()
        before = snapshot(model)
        for _ in range(steps):
            loss = first_tensor(call(model, x)).float().pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        params = dict(model.named_parameters())
        moved = [n for n, t in before["params"].items()
                 if n not in adapted.trainable and not bool((t == params[n]).all())]
        buffers = dict(model.named_buffers())
        for path, module in norms.items():
            if adapted.norm_mode(path) in ("frozen", "affine"):
                for b, _ in module.named_buffers(recurse=False):
                    full = f"{path}.{b}" if path else b
                    if not bool((before["buffers"][full] == buffers[full]).all()):
                        moved.append(full)
        if moved:
            c.fail(f"in phase {i} (epoch {phase.epoch}) {', '.join(moved[:5])} changed while frozen")
