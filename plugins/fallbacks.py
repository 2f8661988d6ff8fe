"""thawkit's generic fallbacks, a built-in plugin registered last (its decision hooks ``trylast``).

They know nothing of torchvision or timm and answer for any ``nn.Module`` that no other
plugin knows: a layout from the top-level children with the last Linear (or 1x1 conv) as
the head, replacement of a Linear / 1x1-conv classifier, an ImageNet-style data config,
``model.no_weight_decay()`` and layer-wise LR decay over the layout's blocks. Other plugins
use the helpers here too (a layout from module-path prefixes, a new classifier)::

    from thawkit.plugins.fallbacks import (generic_layout, last_linear, layout_from_prefixes,
                                           new_classifier, set_submodule)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from thawkit import BackboneSpec, Block, DataConfig, Layout, LayoutError, hookimpl

if TYPE_CHECKING:
    from torch import nn


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
    from torch import nn

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
    import torch
    from torch import nn

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


@hookimpl(trylast=True)
def thawkit_describe_layout(model: nn.Module, spec: BackboneSpec | None) -> Layout:
    return generic_layout(model)


@hookimpl(trylast=True)
def thawkit_replace_head(model: nn.Module, layout: Layout, num_classes: int, dropout: float,
                         keep_aux: bool) -> nn.Module | None:
    if not layout.classifiers:
        return None
    for path in layout.classifiers:
        set_submodule(model, path, new_classifier(model.get_submodule(path), num_classes, dropout))
    return model


@hookimpl(trylast=True)
def thawkit_data_config(model: nn.Module, spec: BackboneSpec | None) -> DataConfig:
    return DataConfig(origin="default (ImageNet statistics, 224 px)")


@hookimpl(trylast=True)
def thawkit_no_weight_decay(model: nn.Module) -> list[str] | None:
    fn = getattr(model, "no_weight_decay", None)
    if callable(fn):
        try:
            return list(fn())
        except Exception:  # a model's helper that needs arguments or state: ignore it
            return None
    return None


@hookimpl(trylast=True)
def thawkit_layer_scales(model: nn.Module, layout: Layout, layer_decay: float,
                         min_scale: float) -> dict[str, float]:
    # layers: stem, blocks..., neck+head as one top layer with scale 1
    layers = ([layout.stem] if layout.stem is not None else []) + list(layout.blocks)
    n = len(layers) + 1
    scales = {}
    for i, block in enumerate(layers):
        s = max(min_scale, layer_decay ** (n - 1 - i))
        scales.update({p: s for p in block.params})
    top = layout.head.params + (layout.neck.params if layout.neck is not None else [])
    scales.update({p: 1.0 for p in top})
    return scales
