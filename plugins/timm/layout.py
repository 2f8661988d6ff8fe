"""Layouts and heads of timm models: classifier discovery, ``group_matcher`` blocks, head reset.

Used by :mod:`thawkit.plugins.timm`; kept apart so that module stays readable.
Everything here works on the meta device.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from itertools import chain
from typing import TYPE_CHECKING, Any

from thawkit import Block, Layout, LayoutError

if TYPE_CHECKING:
    from torch import nn

STEM, NECK, HEAD = "stem", "neck", "head"
#: parameter-free modules timm applies to the stem's output before the first block (the dropout of
#: the position embedding, patch dropout): listed with the stem, whose frozen_dropout they follow
STEM_DROPOUTS = ("pos_drop", "patch_drop")


#: what a model provides to be treated as a timm model (timm's conventions)
CONVENTION = ("group_matcher", "get_classifier", "reset_classifier")


def is_timm(model: Any) -> bool:
    """timm's own models, and any model written to timm's conventions: one that provides
    ``group_matcher``, ``get_classifier`` and ``reset_classifier`` (``no_weight_decay`` is
    optional), wherever its class is defined."""
    return type(model).__module__.startswith("timm.") or \
        all(callable(getattr(model, name, None)) for name in CONVENTION)


# ------------------------------------------------------------------ classifiers
def _module_paths(model: nn.Module) -> dict[int, str]:
    return {id(m): p for p, m in model.named_modules()}


def classifier_modules(model: nn.Module) -> list[str]:
    """Paths of what ``get_classifier()`` returns (one per element of a tuple).

    Models without ``get_classifier`` (timm's ``*_enc`` encoders) fall back to
    ``pretrained_cfg['classifier']`` where those modules exist.
    """
    get = getattr(model, "get_classifier", None)
    if callable(get):
        found = get()
        items = list(found) if isinstance(found, (tuple, list)) else [found]
        paths = _module_paths(model)
        return [paths[id(m)] for m in items if m is not None and id(m) in paths]
    cls = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    names = [cls] if isinstance(cls, str) else list(cls or ())
    out = []
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError:
            continue
        out.append(name)
    return out


def _is_projection(module: nn.Module) -> bool:
    from torch import nn

    return isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv1d))


def out_features(module: nn.Module) -> int | None:
    return getattr(module, "out_features", None) or getattr(module, "out_channels", None)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def final_classifiers(model: nn.Module) -> list[str]:
    """Paths of the layers that produce the logits.

    ``get_classifier()`` may return a composite head (``NormLinear``,
    ``MlpHead``, ``RepVitClassifier``, ``ClassifierHead``, a ``ModuleList`` per
    branch...): inside it, the Linear/Conv layers with ``num_classes`` outputs
    are the final classifiers (the last projection when none matches); the
    rest of the composite head (norms, hidden layers) belongs to the neck.
    """
    num_classes = getattr(model, "num_classes", None)
    out: list[str] = []
    for path in classifier_modules(model):
        module = model.get_submodule(path)
        if not _has_params(module):
            continue
        if _is_projection(module):
            out.append(path)
            continue
        leaves = [(p, m) for p, m in module.named_modules() if p and _is_projection(m)]
        hits = [p for p, m in leaves if out_features(m) == num_classes]
        if not hits:
            hits = [leaves[-1][0]] if leaves else [""]
        out += [f"{path}.{h}" if h else path for h in hits]
    return out


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# ------------------------------------------------------------------- matchers
def _compile(matcher: dict | Callable) -> Callable[[str], tuple[tuple[float, ...], str | None, str | None]]:
    """``name -> (ordinal, label, key)`` with the rules of timm's ``group_with_matcher``.

    timm turns the same matcher into layer ids; this gives, in addition, a
    label for block names (the text a numbered pattern matched, ``blocks.3``,
    else the matcher key, ``stem2``) and the matcher key (to find the stem).
    Unmatched names get the ordinal ``(inf,)``.
    """
    if not isinstance(matcher, dict):
        def call(name: str):
            ordinal = matcher(name)
            return (tuple(ordinal) if isinstance(ordinal, (tuple, list)) else (ordinal,)), None, None
        return call
    compiled = []
    for index, (key, spec) in enumerate(matcher.items()):
        if spec is None:
            continue
        specs = spec if isinstance(spec, (tuple, list)) else [(spec, None)]
        compiled += [(re.compile(s[0]), (index,), s[1], key) for s in specs]

    def match(name: str):
        for regex, prefix, suffix, key in compiled:
            found = regex.match(name)
            if found:
                parts = (prefix, found.groups(), suffix)
                label = found.group(0).strip(".") if found.groups() else key
                return tuple(map(float, chain.from_iterable(filter(None, parts)))), label, key
        return (float("inf"),), None, None
    return match


def _common_module(names: list[str]) -> str:
    split = [n.split(".")[:-1] for n in names]
    common: list[str] = []
    for parts in zip(*split):
        if any(p != parts[0] for p in parts):
            break
        common.append(parts[0])
    return ".".join(common)


def _block_name(names: list[str], label: str | None) -> str:
    if label:
        return label
    common = _common_module(names)
    if common:
        return common
    first = names[0].split(".")
    return ".".join(first[:2]) if len(first) > 2 and first[1].isdigit() else first[0]


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}#{i}", i + 1
    taken.add(out)
    return out


def _matcher_layout(model: nn.Module, matcher: dict | Callable, head: list[str]) -> Layout:
    """Stem, blocks and neck from ``group_matcher(coarse=True)``; ``head`` params are the head."""
    from timm.models import group_parameters
    from timm.models._manipulate import MATCH_PREV_GROUP

    ordinal_of = _compile(matcher)
    info = {n: ordinal_of(n) for n, _ in model.named_parameters()}
    head_params = [n for n in info if _under(n, head)]
    groups = group_parameters(model, matcher)  # timm's own layer ids, in order
    taken = {STEM, NECK, HEAD}
    stem, blocks, neck = None, [], []
    for lid in sorted(groups):
        names = [n for n in groups[lid] if not _under(n, head)]
        unmatched = [n for n in names if info[n][0][0] == float("inf")]
        neck += unmatched
        names = [n for n in names if n not in unmatched]
        if not names:
            continue
        ordinal, _, key = info[names[0]]
        is_stem = lid == 0 and ordinal[0] == 0 and (key is None or key.startswith("stem"))
        if is_stem:
            extra = [m for m in STEM_DROPOUTS if m in dict(model.named_children())]
            stem = Block(STEM, "stem", names, sorted({n.rsplit(".", 1)[0] for n in names}) + extra)
            continue
        # the block is named after its first own (not merged-into-previous) parameter
        lead = next((n for n in names if info[n][0][-1] != MATCH_PREV_GROUP[0]), names[0])
        block = _block_name(names, info[lead][1])
        blocks.append(Block(_unique(block, taken), "block", names, [block]))
    return Layout(
        stem=stem, blocks=blocks,
        neck=Block(NECK, "neck", neck, sorted({n.rsplit(".", 1)[0] for n in neck})) if neck else None,
        head=Block(HEAD, "head", head_params, list(head)),
        classifiers=list(head), source="timm group_matcher")


def _children_layout(model: nn.Module, head: list[str]) -> Layout:
    """For timm models without a coarse ``group_matcher``: blocks from the top-level children.

    The first top-level child (with root-level parameters such as
    ``cls_token``) is the stem; after it, a top-level ``Sequential`` or
    ``ModuleList`` of stages is split into one block per stage. The rest of
    the child that holds the classifier, and plain children after the last
    such container, form the neck.
    """
    from torch import nn

    head_params = [n for n, _ in model.named_parameters() if _under(n, head)]
    children = [(n, m) for n, m in model.named_children() if _has_params(m)]
    stages: list[tuple[str, list[str]]] = []  # (block name, prefixes), in order
    neck_prefixes: list[str] = []
    last_container = -1
    for i, (name, child) in enumerate(children):
        if any(h.startswith(name + ".") or h == name for h in head):
            neck_prefixes.append(name)
            continue
        kids = [k for k, m in child.named_children() if _has_params(m)]
        if i > 0 and isinstance(child, (nn.Sequential, nn.ModuleList)) and len(kids) >= 2:
            stages += [(f"{name}.{k}", [f"{name}.{k}"]) for k in kids]
            last_container = len(stages) - 1
        else:
            stages.append((name, [name]))
    neck_prefixes += [p for s in stages[last_container + 1:] for p in s[1]] if last_container >= 0 else []
    stages = stages[: last_container + 1] if last_container >= 0 else stages
    roots = [n for n, _ in model.named_parameters(recurse=False)]
    stem_prefixes: list[str] = list(roots)
    first = children[0][0] if children else None
    if stages and stages[0][0] == first:
        stem_prefixes += stages.pop(0)[1]

    def owned(prefixes: list[str]) -> list[str]:
        return [n for n, _ in model.named_parameters() if not _under(n, head) and _under(n, prefixes)]

    stem = Block(STEM, "stem", owned(stem_prefixes), stem_prefixes) if stem_prefixes else None
    taken = {STEM, NECK, HEAD}
    blocks = [Block(_unique(n, taken), "block", owned(p), p) for n, p in stages]
    neck = owned(neck_prefixes)
    return Layout(
        stem=stem if stem is not None and stem.params else None,
        blocks=[b for b in blocks if b.params],
        neck=Block(NECK, "neck", neck, neck_prefixes) if neck else None,
        head=Block(HEAD, "head", head_params, list(head)),
        classifiers=list(head), source="timm top-level children")


def describe(model: nn.Module) -> Layout:
    """The layout of a timm model (see :func:`thawkit.plugins.timm.thawkit_describe_layout`)."""
    from thawkit import last_linear

    name = type(model).__name__
    head = final_classifiers(model)
    # a model built with num_classes=0 keeps an empty head until replace_head creates one;
    # an encoder without any classification head is described up to its last projection
    if not head and not callable(getattr(model, "reset_classifier", None)):
        last = last_linear(model)
        if not last:
            raise LayoutError(f"timm model {name} has neither a classifier nor a final projection")
        head = [last]
    matcher = None
    if callable(getattr(model, "group_matcher", None)):
        try:
            matcher = model.group_matcher(coarse=True)
        except (AssertionError, NotImplementedError):  # rdnet: coarse grouping not implemented
            matcher = None
    layout = _matcher_layout(model, matcher, head) if matcher is not None else None
    if layout is None or len(layout.blocks) < 2:
        children = _children_layout(model, head)
        if layout is None or len(children.blocks) > len(layout.blocks):
            layout = children
    return layout


# ---------------------------------------------------------------------- heads
def _reference(model: nn.Module, paths: list[str]):
    for path in paths:
        ref = next(model.get_submodule(path).parameters(), None)
        if ref is not None:
            return ref
    return next(model.parameters(), None)


def _set_dropout(model: nn.Module, path: str, p: float) -> bool:
    """Set the probability of the dropout timm applies right before classifier ``path``.

    timm's conventions: a ``head_drop`` module (on the model or the head), a
    ``drop`` module inside the head (``ClassifierHead``,
    ``NormMlpClassifierHead``, ``NormLinear``), or a ``drop_rate`` attribute
    that ``forward_head`` reads (resnet, efficientnet). False when none applies.
    """
    from torch import nn

    parts = path.split(".")[:-1]
    while True:
        owner = model.get_submodule(".".join(parts)) if parts else model
        names = ("head_drop", "drop") if parts else ("head_drop",)
        for attr in names:
            found = getattr(owner, attr, None)
            if isinstance(found, nn.Dropout):
                found.p = p
                return True
        if not parts:
            break
        parts.pop()
    forward_head = getattr(type(model), "forward_head", None)
    code = getattr(forward_head, "__code__", None)
    if isinstance(getattr(model, "drop_rate", None), (int, float)) and code is not None \
            and "drop_rate" in code.co_names:
        model.drop_rate = p
        return True
    return False


def reset_head(model: nn.Module, layout: Layout, num_classes: int, dropout: float) -> nn.Module:
    """New classifier(s) with ``num_classes`` outputs via timm's own ``reset_classifier``.

    The new head is moved to the old head's device and dtype (meta stays
    meta) and follows the model's train/eval mode. ``dropout > 0`` sets the
    probability of timm's pre-classifier dropout, or wraps the classifier in
    ``Sequential(Dropout, classifier)`` where the model has none.
    """
    from thawkit import new_classifier, set_submodule
    from torch import nn

    name = type(model).__name__
    reset = getattr(model, "reset_classifier", None)
    if not callable(reset) or not callable(getattr(model, "get_classifier", None)):
        raise LayoutError(
            f"timm model {name} is an encoder without a classification head (no reset_classifier); "
            "its output is not (batch, classes). Use the classification variant of this "
            "architecture, or put your own head on its features")
    ref = _reference(model, layout.classifiers)
    before = list(model.modules())  # held so that no new module can reuse an old one's id
    old = {id(m) for m in before}
    try:
        reset(num_classes)
        finals = final_classifiers(model)
        ok = bool(finals) and all(out_features(model.get_submodule(p)) == num_classes for p in finals)
    except Exception:  # noqa: BLE001 - any model's reset_classifier may fail: replace by path
        ok = False
    if not ok:
        try:
            for path in layout.classifiers:
                set_submodule(model, path, new_classifier(model.get_submodule(path), num_classes, 0.0))
        except (AttributeError, TypeError) as exc:
            raise LayoutError(f"cannot give timm model {name} a {num_classes}-class head: "
                              f"reset_classifier did not, and replacing {layout.classifiers} "
                              f"failed ({exc})") from None
        finals = list(layout.classifiers)
    # reset_classifier may build on the default device and dtype: bring what it made in line
    for module in model.modules():
        if id(module) in old:
            continue
        if ref is not None:
            module.to(device=ref.device, dtype=ref.dtype)
        module.train(model.training)
    if dropout > 0:
        for path in finals:
            if not _set_dropout(model, path, dropout):
                set_submodule(model, path, nn.Sequential(nn.Dropout(dropout), model.get_submodule(path)))
    return model
