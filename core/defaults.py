"""Core's own fallback hook implementations, registered like any plugin (``trylast``).

They know nothing of torchvision or timm: a generic layout for any
``nn.Module``, replacement of a Linear / 1x1-conv classifier, ImageNet-style
data config, ``model.no_weight_decay()`` and layer-wise LR decay over the
layout's blocks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .backbone import DataConfig
from .layout import generic_layout
from .manager import hookimpl

if TYPE_CHECKING:
    from torch import nn

    from .layout import Layout


@hookimpl(trylast=True)
def thawkit_describe_layout(model: nn.Module, spec) -> Layout:
    return generic_layout(model)


def new_classifier(old: nn.Module, num_classes: int, dropout: float) -> nn.Module:
    """A fresh classifier like ``old`` (Linear or 1x1 Conv2d) with ``num_classes`` outputs.

    Built on ``old``'s device and dtype; with ``dropout > 0`` it is preceded by a
    ``nn.Dropout`` in a ``nn.Sequential`` (so the classifier path becomes ``path.1``).
    """
    import torch
    from torch import nn

    ref = next(old.parameters(), None)
    factory = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
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
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)


@hookimpl(trylast=True)
def thawkit_replace_head(model: nn.Module, layout: Layout, num_classes: int, dropout: float,
                         keep_aux: bool) -> nn.Module | None:
    if not layout.classifiers:
        return None
    for path in layout.classifiers:
        set_submodule(model, path, new_classifier(model.get_submodule(path), num_classes, dropout))
    return model


@hookimpl(trylast=True)
def thawkit_data_config(model: nn.Module, spec) -> DataConfig:
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
