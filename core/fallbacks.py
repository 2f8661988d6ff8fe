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
from .heads import new_classifier, set_submodule
from .hookspecs import hookimpl

if TYPE_CHECKING:
    from torch import nn

    from .backbone import BackboneSpec
    from .layout import Layout


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
