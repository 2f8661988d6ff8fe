"""``check_plugin``: every check that applies to what one plugin registers and implements."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .layouts import check_head_plugin, check_layout_plugin
from .models import ModelCase, ModelLike, as_case, default_models
from .optim import check_optimizer, check_schedule
from .recipes import check_recipe_reader
from .report import Report
from .sources import check_source
from .strategy import check_strategy

if TYPE_CHECKING:
    from thawkit import ThawkitPluginManager

REGISTERS = ("a plugin registers without error: its hooks exist, its collector hooks return, and "
             "no name it registers is another plugin's")
SECTIONS = "a recipe section is a pydantic model whose fields all have defaults"
#: a source's models up to this size are built on the CPU and run; larger ones stay on meta
CPU_LIMIT = 5_000_000
NOT_CHECKED = ("thawkit_no_weight_decay", "thawkit_infer_num_classes", "thawkit_adapted",
               "thawkit_register_commands", "thawkit_add_hookspecs")


def check_plugin(plugin: Any, *, name: str | None = None, pm: ThawkitPluginManager | None = None,
                 models: Sequence[ModelLike] = (), recipe: str | Path | None = None,
                 raises: bool = True) -> Report:
    """Register ``plugin`` (unless ``pm`` holds it already) and run every applicable check:
    its strategies, sources, optimizers and schedules, its recipe reader on hostile files (and
    on ``recipe``, a recipe in its format), and its layout and head hooks on the models it
    answers for (its sources' first models, ``models`` and the kit's defaults).

    Example::

        def test_the_whole_plugin():
            check_plugin(thawkit_plugin_example)
    """
    import thawkit

    report = Report()
    pm = pm or thawkit.get_plugin_manager(entrypoints=False)
    registered = pm.get_name(plugin)
    subject = f"plugin {registered or name or getattr(plugin, '__name__', type(plugin).__name__)!r}"
    with report.checking(subject, "registers", REGISTERS) as c, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if registered is None:
            registered = pm.add_plugin(plugin, name=name)
        for hook in list(pm.collectors):
            pm.registry(hook)
        if pm.get_plugin(registered) is None:
            c.fail(pm.load_errors.get(registered, "it was unloaded"))
    if not c.passed:
        return report.raise_for_failures() if raises else report
    mine = {hook: [e for e in pm.registry(hook).entries.values() if e.plugin == registered]
            for hook in pm.collectors}
    hooks = {caller.name for caller in pm.get_hookcallers(plugin) or []}
    cases = [as_case(m, pm) for m in models]
    for entry in mine.get("thawkit_register_sources", []):
        report.extend(check_source(entry.obj, name=entry.name, pm=pm, max_cpu_params=CPU_LIMIT,
                                   raises=False))
        cases += _source_cases(entry.name, entry.obj, pm)
    for entry in mine.get("thawkit_register_strategies", []):
        report.extend(check_strategy(entry.obj, [*default_models(), *cases], pm=pm, raises=False))
    for entry in mine.get("thawkit_register_optimizers", []):
        report.extend(check_optimizer(entry.obj, name=entry.name, raises=False))
    for entry in mine.get("thawkit_register_schedules", []):
        report.extend(check_schedule(entry.obj, name=entry.name, raises=False))
    for entry in mine.get("thawkit_recipe_sections", []):
        with report.checking(f"recipe section {entry.name!r}", "builds from defaults", SECTIONS):
            entry.obj()
    if "thawkit_read_recipe" in hooks:
        report.extend(check_recipe_reader(plugin, sample=recipe, name=registered, raises=False))
    candidates = [*cases, *default_models()]
    if "thawkit_describe_layout" in hooks:
        _on_models(report, subject, "thawkit_describe_layout", check_layout_plugin, plugin, pm,
                   [c for c in candidates if _answers_layout(plugin, c)])
    if "thawkit_replace_head" in hooks:
        _on_models(report, subject, "thawkit_replace_head", check_head_plugin, plugin, pm,
                   [c for c in candidates if _answers_head(plugin, c, pm, report, subject)])
    unchecked = sorted(hooks & set(NOT_CHECKED))
    if unchecked:
        report.skip(subject, "hooks without a check", f"the kit does not check {', '.join(unchecked)}")
    return report.raise_for_failures() if raises else report


def _source_cases(source_name: str, source: Any, pm: ThawkitPluginManager) -> list[ModelCase]:
    """The source's first two models: run on the CPU when small, else on the meta device."""
    import thawkit

    out = []
    try:
        names = source.list_models()[:2]
    except Exception:  # check_source reports it
        return out
    for model_name in names:
        spec = f"{source_name}:{model_name}"
        try:
            size = sum(p.numel() for p in thawkit.load_backbone(spec, pm=pm, device="meta").parameters())
        except Exception:  # check_source reports it
            continue
        small = size <= CPU_LIMIT
        out.append(ModelCase(spec, (lambda s=spec, meta=not small: thawkit.load_backbone(
            s, pm=pm, **({"device": "meta"} if meta else {}))), infer=small))
    return out


def _own(plugin: Any) -> Any:
    import thawkit

    own = thawkit.get_plugin_manager(entrypoints=False, builtins=False)
    own.register(plugin, name="checked")
    return own


def _answers_layout(plugin: Any, case: ModelCase) -> bool:
    import thawkit

    try:
        model = case.build()
        return _own(plugin).hook.thawkit_describe_layout(model=model, spec=thawkit.spec_of(model)) is not None
    except Exception:
        return True  # let the check report the failure


def _answers_head(plugin: Any, case: ModelCase, pm: ThawkitPluginManager, report: Report,
                  subject: str) -> bool:
    """Whether the plugin puts a new head on ``case``'s model. Not for a case that keeps its
    own head (``num_classes=None``), nor where the plugin refuses with a ConfigError (a
    language model's head, a model without a task head): that message is what a user reads,
    and the report shows it."""
    import thawkit

    if case.num_classes is None:
        return False
    try:
        model = case.build()
        layout = thawkit.describe_layout(model, pm=pm, require_head=False)
        return _own(plugin).hook.thawkit_replace_head(model=model, layout=layout, num_classes=3,
                                                      dropout=0.0, keep_aux=False) is not None
    except thawkit.ConfigError as exc:
        report.skip(f"{subject} on {case.name}", "thawkit_replace_head", f"refused: {exc}")
        return False
    except Exception:
        return True  # let the check report the failure


def _on_models(report: Report, subject: str, hook: str, check: Any, plugin: Any,
               pm: ThawkitPluginManager, cases: list[ModelCase]) -> None:
    if not cases:
        report.skip(subject, hook, "it answered for none of the models tried; check it on your model "
                    "(thawkit check-plugin --model SPEC, or the kit's function in a test)")
    for case in cases:
        report.extend(check(plugin, case, pm=pm, raises=False))
