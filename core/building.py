"""Helpers for building a plugin: layouts from module names, classifier heads, sequential splits.

Every plugin that teaches thawkit a model family needs the same few pieces, so they live here,
importable from ``thawkit`` itself (``from thawkit import layout_from_prefixes``):

* :func:`layout_from_prefixes` builds a :class:`~thawkit.Layout` from module-path prefixes, the
  usual answer to ``thawkit_describe_layout``; :func:`generic_layout` describes any
  ``nn.Module`` from its top-level children (the built-in fallback uses it);
* :func:`last_linear`, :func:`new_classifier` and :func:`set_submodule` find and replace a
  Linear or 1x1-conv classifier, the usual answer to ``thawkit_replace_head``;
* :func:`split_sequential` and :class:`ForwardStep` split a model whose forward pass is a
  sequence of steps, the usual answer to ``thawkit_split_model``; :func:`stochastic` says what
  makes a module random in training (a split's frozen prefix may hold nothing random).

They know nothing of torchvision or timm. Example, for a model with ``stem``, ``stages.0..3``
and ``fc``::

    from thawkit import hookimpl, layout_from_prefixes

    @hookimpl
    def thawkit_describe_layout(model, spec):
        if type(model).__name__ != "MyNet":
            return None
        return layout_from_prefixes(
            model, stem=["stem"], blocks=[(f"stages.{i}", [f"stages.{i}"]) for i in range(4)],
            head=["fc"], classifiers=["fc"], source="my-plugin")
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .errors import LayoutError
from .layout import Block, Layout, Split


def _prefix_match(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def layout_from_prefixes(
    model: nn.Module,
    *,
    stem: Sequence[str] | None,
    blocks: Sequence[tuple[str, Sequence[str]]],
    head: Sequence[str],
    neck: Sequence[str] | None = None,
    classifiers: Sequence[str] = (),
    aux: Sequence[str] = (),
    feeds: str | None = None,
    source: str = "generic",
) -> Layout:
    """Build a layout from module-path prefixes; each parameter goes to its longest matching prefix.

    ``blocks`` is a list of ``(block_name, [prefix, ...])``. Prefixes may also
    be full parameter names (for root-level parameters such as ``cls_token``).
    """
    spec: list[tuple[str, Any, list[str]]] = []
    if stem is not None:
        spec.append(("stem", "stem", list(stem)))
    spec += [(n, "block", list(p)) for n, p in blocks]
    if neck:
        spec.append(("neck", "neck", list(neck)))
    spec.append(("head", "head", list(head)))
    assigned: dict[str, list[str]] = {n: [] for n, _, _ in spec}
    for pname, _ in model.named_parameters():
        best, best_len = None, -1
        for bname, _, prefixes in spec:
            for pre in prefixes:
                if _prefix_match(pname, pre) and len(pre) > best_len:
                    best, best_len = bname, len(pre)
        if best is not None:
            assigned[best].append(pname)
    made = {n: Block(n, role, assigned[n], list(pre)) for n, role, pre in spec}
    return Layout(
        stem=made.get("stem") if stem is not None else None,
        blocks=[made[n] for n, _ in blocks],
        neck=made["neck"] if neck else None,
        head=made["head"],
        classifiers=list(classifiers),
        aux=list(aux),
        feeds=feeds,
        source=source,
    )


def last_linear(model: nn.Module) -> str | None:
    """Path of the last ``nn.Linear`` (or 1x1 ``nn.Conv2d``) registered in the model, if any."""
    found = None
    for path, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or (
            isinstance(mod, nn.Conv2d) and mod.kernel_size == (1, 1)
        ):
            found = path
    return found


def generic_layout(model: nn.Module) -> Layout:
    """Describe any ``nn.Module``: the last Linear is the head, top-level children are blocks.

    The first top-level child with parameters is the stem; root-level
    parameters join the stem. When the head is nested inside a top-level
    child (``classifier = Sequential(..., Linear)``), that child's other
    parameters form the neck. A model whose parameters all live in one
    container (``nn.Sequential`` at the root) is split one level deeper.
    """
    head_path = last_linear(model)
    if head_path is None:
        raise LayoutError(
            f"cannot describe {type(model).__name__}: no nn.Linear or 1x1 nn.Conv2d classifier "
            "found; write a plugin implementing thawkit_describe_layout for it")
    if head_path == "":
        raise LayoutError(f"{type(model).__name__} is a bare classifier: there is no backbone to "
                          "freeze or thaw")
    container = _split_container(model, head_path)
    prefix = f"{container}." if container else ""
    parent = model.get_submodule(container) if container else model
    children = [n for n, m in parent.named_children() if any(True for _ in m.parameters())]
    head_top = head_path[len(prefix):].split(".")[0]
    if head_top not in children:
        children.append(head_top)
    before = children[: children.index(head_top)]
    after = children[children.index(head_top) + 1:]
    # _split_container only descends through parameter-free wrappers, so root parameters
    # exist only when there is no container
    root_params = [n for n, _ in model.named_parameters(recurse=False)]
    stem_prefixes = ([prefix + before[0]] if before else []) + root_params
    blocks = [(prefix + b, [prefix + b]) for b in before[1:]]
    # the rest of the head's top-level child (classifier = Sequential(..., Linear)) and
    # anything registered after it form the neck
    neck = [prefix + a for a in after]
    if prefix + head_top != head_path:
        neck.insert(0, prefix + head_top)
    layout = layout_from_prefixes(
        model,
        stem=stem_prefixes if stem_prefixes else None,
        blocks=blocks,
        neck=neck or None,
        head=[head_path],
        classifiers=[head_path],
        source="generic",
    )
    if layout.neck is not None and not layout.neck.params:
        layout.neck = None
    if layout.stem is not None and not layout.stem.params:
        layout.stem = None
    return layout


def _split_container(model: nn.Module, head_path: str) -> str:
    """The module path whose children are the blocks: descend while one child holds everything."""
    path = ""
    mod = model
    while True:
        kids = [(n, m) for n, m in mod.named_children() if any(True for _ in m.parameters())]
        own = list(mod.named_parameters(recurse=False))
        if len(kids) == 1 and not own and head_path.startswith((path + "." if path else "") + kids[0][0]):
            name = kids[0][0]
            path = f"{path}.{name}" if path else name
            mod = kids[0][1]
            continue
        return path


def new_classifier(old: nn.Module, num_classes: int, dropout: float) -> nn.Module:
    """A fresh classifier like ``old`` (Linear or 1x1 Conv2d) with ``num_classes`` outputs.

    Built on ``old``'s device and dtype; with ``dropout > 0`` it is preceded by a
    ``nn.Dropout`` in a ``nn.Sequential`` (so the classifier path becomes ``path.1``).
    """
    ref = next(old.parameters(), None)
    factory: dict[str, Any] = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, **factory)
    elif isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size,
                        stride=old.stride, padding=old.padding, bias=old.bias is not None, **factory)
    else:
        raise TypeError(f"cannot rebuild a classifier of type {type(old).__name__}")
    if ref is not None and ref.is_meta:
        return new if dropout <= 0 else nn.Sequential(nn.Dropout(dropout), new)
    with torch.no_grad():
        if isinstance(new, nn.Linear):
            nn.init.trunc_normal_(new.weight, std=0.02)
        else:
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if new.bias is not None:
            nn.init.zeros_(new.bias)
    return new if dropout <= 0 else nn.Sequential(nn.Dropout(dropout), new)


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at dotted ``path`` inside ``model`` (``"classifier.1"``, ``"fc"``)."""
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)


class ForwardStep(nn.Module):  # type: ignore[misc]  # torch is not analysed (pyproject.toml: mypy)
    """One step of a forward pass that is not a plain submodule call: ``fn(x)``.

    ``uses`` are the modules and parameters ``fn`` runs; they are registered here so
    that a prefix made of steps shows thawkit everything it computes with. Example,
    for a forward that starts with ``x = self.stem(x) + self.pos_embed``::

        ForwardStep(lambda x: model.stem(x) + model.pos_embed, model.stem, model.pos_embed)
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *uses: Any):
        super().__init__()
        self.fn = fn
        self.modules_used = nn.ModuleList([u for u in uses if isinstance(u, nn.Module)])
        self.params_used = nn.ParameterList([u for u in uses if isinstance(u, nn.Parameter)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", "")


def split_sequential(model: nn.Module, layout: Layout, block: str,
                     steps: Sequence[nn.Module]) -> Split | None:
    """Split a model whose forward pass is ``for step in steps: x = step(x)`` below ``block``.

    ``steps`` are, in forward order, the model's own submodules or
    :class:`ForwardStep` wrappers. The prefix is every step before the first one that
    holds a parameter of ``block`` or of a later block (``layout.all_blocks`` order);
    parameter-free dropout steps just before that step join the rest, so that
    dropout in front of a classifier does not stop a cache. Returns ``None`` (no
    split) when the steps do not hold every parameter of the model exactly once, when
    the boundary falls inside a step, or when nothing lies below it.

    Example::

        steps = [model.stem, *model.stages, model.pool, nn.Flatten(1), model.fc]
        split = split_sequential(model, layout, "head", steps)
    """
    order = {b.name: i for i, b in enumerate(layout.all_blocks)}
    if block not in order:
        return None
    target = order[block]
    block_of = layout.block_of()
    name_of = {id(p): n for n, p in model.named_parameters()}
    seen: set[int] = set()
    spans: list[tuple[int, int] | None] = []
    for step in steps:
        ids = {id(p) for p in step.parameters()}
        if ids & seen or not ids <= name_of.keys():
            return None
        seen |= ids
        where = [order[block_of[name_of[i]]] for i in ids]
        spans.append((min(where), max(where)) if where else None)
    if seen != set(name_of):
        return None
    cut = next((i for i, s in enumerate(spans) if s is not None and s[1] >= target), len(steps))
    if any(s is not None and s[0] < target for s in spans[cut:]):
        return None  # the boundary falls inside a step
    while cut > 0 and spans[cut - 1] is None and stochastic(steps[cut - 1]) is not None:
        cut -= 1
    if cut == 0:
        return None
    return Split(nn.Sequential(*steps[:cut]), nn.Sequential(*steps[cut:]), block)


_RATE_ATTRS = ("p", "prob", "drop_prob", "drop_rate", "drop_path_rate", "dropout", "attention_dropout")


def stochastic(module: nn.Module) -> str | None:
    """What makes ``module`` random in train mode (``"Dropout p=0.5"``), or ``None``.

    Dropout of every kind, drop-path and stochastic depth layers (classes named
    ``*Drop*`` or ``*StochasticDepth*`` with a rate above zero), and any module with a
    ``drop*`` rate attribute above zero (``nn.MultiheadAttention(dropout=...)``,
    torchvision DenseNet layers' ``drop_rate``).
    """
    name = type(module).__name__
    dropout_like = "drop" in name.lower() or "stochasticdepth" in name.lower()
    for attr in _RATE_ATTRS:
        if not (dropout_like or "drop" in attr):
            continue
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return f"{name} {attr}={value:g}"
    return None
