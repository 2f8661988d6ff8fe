"""``check_layout_plugin`` and ``check_head_plugin``: the hooks that describe a model and put a
new head on it, against the contracts in ``thawkit.hookspecs``."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .models import (ModelCase, ModelLike, as_case, call, changed, first_tensor, same, snapshot,
                     to_meta)
from .report import Check, Report

if TYPE_CHECKING:
    from thawkit import ThawkitPluginManager

ANSWERS = "a plugin answers the decision hooks for the models it knows (and None for the others)"
VALID = ("every parameter in exactly one block, block names unique, and the head holding the "
         "classifier's parameters (Layout.validate)")
ROLES = "the stem, blocks, neck and head carry the roles 'stem', 'block', 'neck' and 'head'"
BLOCKS = "a layout has at least one block between the stem and the head"
PATHS = ("classifiers name the final classifier module(s), whose parameters are all in the head; "
         "aux and feeds name modules of the model")
PURE = "describing a model changes nothing, and describes it the same way every time"
META = "a model on the meta device is described exactly like the real one"
SCALES = ("layer scales cover every parameter, lie in [min_scale, 1], are 1 for the head and never "
          "grow from the head towards the stem")
DATA = ("the data config's input_size is (channels, height, width) an image model accepts, with one "
        "mean and std per channel and crop_pct in (0, 1]")
HEAD_OUT = "after the new head, the model outputs num_classes scores"
HEAD_LAYOUT = "the model with its new head is described with the new classifier in the head"
HEAD_DEVICE = "the new head sits on the backbone's device and dtype (the meta device included)"
HEAD_DROPOUT = "dropout > 0 puts an nn.Dropout with that probability before the new classifier"
HEAD_BACKBONE = "replacing the head leaves every parameter outside the head as it was"


def _managers(plugin: Any, pm: ThawkitPluginManager | None) -> tuple[ThawkitPluginManager, Any]:
    """The full manager (built-ins and the plugin) and a manager holding only the plugin."""
    import thawkit

    full = pm or thawkit.get_plugin_manager(entrypoints=False)
    if full.get_name(plugin) is None:
        full.add_plugin(plugin, name=f"checked plugin {getattr(plugin, '__name__', id(plugin))}")
    own = thawkit.get_plugin_manager(entrypoints=False, builtins=False)
    own.register(plugin, name="checked")
    return full, own


def _name(plugin: Any, pm: ThawkitPluginManager) -> str:
    return f"plugin {pm.get_name(plugin)!r}"


def check_layout_plugin(plugin: Any, model: ModelLike, *, pm: ThawkitPluginManager | None = None,
                        raises: bool = True) -> Report:
    """Check the plugin's ``thawkit_describe_layout`` on ``model`` (and its
    ``thawkit_layer_scales`` and ``thawkit_data_config`` when it implements them).

    ``model``: a module, a ``"source:name"`` spec, a function building one or a
    :class:`ModelCase`; the plugin must answer for it.

    Example::

        def test_my_layout():
            check_layout_plugin(my_plugin, my_plugin.MyNet())
    """
    import thawkit

    report = Report()
    full, own = _managers(plugin, pm)
    case = as_case(model, full)
    subject = f"{_name(plugin, full)} on {case.name}"
    with report.checking(subject, "describes the model", ANSWERS) as c:
        model = case.build()
        before = snapshot(model)
        layout = own.hook.thawkit_describe_layout(model=model, spec=thawkit.spec_of(model))
        if layout is None:
            c.fail(f"thawkit_describe_layout returned None for {type(model).__name__}")
        if not isinstance(layout, thawkit.Layout):
            c.fail(f"thawkit_describe_layout returned {type(layout).__name__}, not a thawkit.Layout")
    if not c.passed:
        return report.raise_for_failures() if raises else report
    headless = not layout.head.params and not layout.classifiers  # built with num_classes=0
    with report.checking(subject, "every parameter is in exactly one block", VALID):
        layout.validate(model, require_head=not headless)
    with report.checking(subject, "blocks carry their roles", ROLES) as c:
        wrong = [f"{b.name} ({b.role})" for want, blocks in (
            ("stem", [layout.stem] if layout.stem else []), ("block", layout.blocks),
            ("neck", [layout.neck] if layout.neck else []), ("head", [layout.head]))
            for b in blocks if b.role != want]
        if wrong:
            c.fail(f"wrong roles: {', '.join(wrong)}")
    with report.checking(subject, "has blocks", BLOCKS) as c:
        if not layout.blocks:
            c.fail("layout.blocks is empty")
    with report.checking(subject, "classifiers, aux and feeds are module paths", PATHS) as c:
        modules = dict(model.named_modules())
        if not layout.classifiers and not headless:  # a model built without one has none
            c.fail("layout.classifiers is empty")
        for path in [*layout.classifiers, *layout.aux, *([layout.feeds] if layout.feeds else [])]:
            if path not in modules:
                c.fail(f"{path!r} is no module of the model")
        # by identity: a classifier tied to the input embeddings holds the parameter the model
        # lists under the embedding's name
        listed = {id(t): n for n, t in model.named_parameters()}
        for path in [p for p in layout.classifiers if p in modules]:
            outside = [f"{path}.{n}" + (f" (listed as {listed[id(t)]})" if id(t) in listed else "")
                       for n, t in modules[path].named_parameters()
                       if listed.get(id(t)) not in layout.head.params]
            if outside:
                c.fail(f"classifier {path!r} has parameters outside the head: {', '.join(outside)}")
    with report.checking(subject, "describing is pure and deterministic", PURE) as c:
        again = own.hook.thawkit_describe_layout(model=model, spec=thawkit.spec_of(model))
        diff = changed(before, model)
        if diff:
            c.fail(f"describing changed {', '.join(diff[:5])}")
        if again is None or again.to_dict() != layout.to_dict():
            c.fail("a second call described the model differently")
    with report.checking(subject, "works on the meta device", META) as c:
        meta = to_meta(model)
        on_meta = own.hook.thawkit_describe_layout(model=meta, spec=thawkit.spec_of(meta))
        if on_meta is None or on_meta.to_dict() != layout.to_dict():
            c.fail("the meta copy is described differently (or not at all)")
    if own.hook.thawkit_layer_scales.get_hookimpls():
        with report.checking(subject, "layer scales", SCALES) as c:
            _scales(own, model, layout, c)
    if own.hook.thawkit_data_config.get_hookimpls():
        with report.checking(subject, "data config", DATA) as c:
            _data_config(own, model, case, c)
    return report.raise_for_failures() if raises else report


def _scales(own: Any, model: Any, layout: Any, c: Check) -> None:
    scales = own.hook.thawkit_layer_scales(model=model, layout=layout, layer_decay=0.5, min_scale=0.01)
    if scales is None:
        c.fail("thawkit_layer_scales returned None for a model the plugin describes")
    missing = [n for n, _ in model.named_parameters() if n not in scales]
    if missing:
        c.fail(f"no scale for {', '.join(missing[:5])}")
    bad = [f"{n}={s}" for n, s in scales.items() if not 0.01 - 1e-12 <= s <= 1.0 + 1e-12]
    if bad:
        c.fail(f"scales outside [0.01, 1]: {', '.join(bad[:5])}")
    if any(scales[p] != 1.0 for p in layout.head.params):
        c.fail("the head's scale is not 1")
    tops = [max((scales[p] for p in b.params), default=None) for b in layout.all_blocks]
    tops = [t for t in tops if t is not None]
    if any(b < a - 1e-12 for a, b in zip(tops, tops[1:])):
        c.fail(f"the largest scale per block, stem to head, is {[round(t, 4) for t in tops]}")


def _data_config(own: Any, model: Any, case: ModelCase, c: Check) -> None:
    import thawkit
    import torch

    config = own.hook.thawkit_data_config(model=model, spec=thawkit.spec_of(model))
    if config is None:
        return
    if not isinstance(config, thawkit.DataConfig):
        c.fail(f"thawkit_data_config returned {type(config).__name__}, not a thawkit.DataConfig")
    size = tuple(config.input_size)
    if len(size) != 3 or len(config.mean) != size[0] or len(config.std) != size[0]:
        c.fail(f"input_size {size} with mean {config.mean} and std {config.std}")
    if not 0 < config.crop_pct <= 1:
        c.fail(f"crop_pct is {config.crop_pct}")
    if case.infer and (case.input_size is None or len(case.input_size) == 3):  # image models
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *size))


def check_head_plugin(plugin: Any, model: ModelLike, *, num_classes: Sequence[int] = (3, 7),
                      pm: ThawkitPluginManager | None = None, raises: bool = True) -> Report:
    """Check the plugin's ``thawkit_replace_head`` on ``model`` for each of ``num_classes``.

    The layout handed to the hook comes from every plugin (the built-ins and this one); the
    new head is then checked by output shape, layout, device and dtype, dropout, and an
    untouched backbone.

    Example::

        def test_my_head():
            check_head_plugin(my_plugin, "myzoo:net-s")
    """
    import thawkit
    from torch import nn

    report = Report()
    full, own = _managers(plugin, pm)
    case = as_case(model, full)
    subject = f"{_name(plugin, full)} on {case.name}"

    def replace(n: int, dropout: float = 0.0, meta: bool = False) -> tuple[Any, Any, Any]:
        model = case.build()
        if meta:
            model = to_meta(model)
        layout = thawkit.describe_layout(model, pm=full, require_head=False)
        before = snapshot(model)
        new = own.hook.thawkit_replace_head(model=model, layout=layout, num_classes=n,
                                            dropout=dropout, keep_aux=False)
        return new, layout, before

    for n in num_classes:
        with report.checking(subject, f"replaces the head for {n} classes", ANSWERS) as c:
            new, old_layout, before = replace(n)
            if new is None:
                c.fail("thawkit_replace_head returned None")
            if not isinstance(new, nn.Module):
                c.fail(f"thawkit_replace_head returned {type(new).__name__}, not an nn.Module")
        if not c.passed:
            continue
        with report.checking(subject, f"the new layout holds the new head ({n} classes)", HEAD_LAYOUT):
            thawkit.describe_layout(new, pm=full)
        with report.checking(subject, f"outputs {n} scores", HEAD_OUT) as c:
            if case.infer:
                new.eval()
                out = first_tensor(call(new, case.input(new, full)))
                if tuple(out.shape) != (2, n):
                    c.fail(f"the output has shape {tuple(out.shape)} for a batch of 2")
        with report.checking(subject, f"keeps the backbone ({n} classes)", HEAD_BACKBONE) as c:
            # the head's parameters, and the buffers of modules holding them (aux heads go)
            head = set(old_layout.head.params)
            owners = {p.rpartition(".")[0] for p in head}
            now = {**dict(new.named_parameters()), **dict(new.named_buffers())}
            moved = [k for k, v in {**before["params"], **before["buffers"]}.items()
                     if k not in head and k.rpartition(".")[0] not in owners
                     and (k not in now or not same(v, now[k]))]
            if moved:
                c.fail(f"replacing the head changed or removed {', '.join(moved[:5])}")
    with report.checking(subject, "builds the head where the backbone is", HEAD_DEVICE) as c:
        for meta in (False, True):
            new, _, _ = replace(num_classes[0], meta=meta)
            found = {(p.device.type, p.dtype) for p in new.parameters()}
            if len(found) != 1:
                c.fail(f"{'on meta' if meta else 'on the CPU'}, parameters are on {sorted(map(str, found))}")
    with report.checking(subject, "puts dropout before the classifier", HEAD_DROPOUT) as c:
        new, _, _ = replace(num_classes[0], dropout=0.25)
        if not any(isinstance(m, nn.Dropout) and m.p == 0.25 for m in new.modules()):
            c.fail("with dropout=0.25 the model has no nn.Dropout(p=0.25)")
    return report.raise_for_failures() if raises else report
