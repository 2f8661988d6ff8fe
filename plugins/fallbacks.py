"""thawkit's generic fallbacks, a built-in plugin registered last (its decision hooks ``trylast``).

They know nothing of torchvision or timm and answer for any ``nn.Module`` that no other
plugin knows: a layout from the top-level children with the last Linear (or 1x1 conv) as
the head, replacement of a Linear / 1x1-conv classifier, an ImageNet-style data config,
``model.no_weight_decay()`` and layer-wise LR decay over the layout's blocks.

The helpers they are built on are public in ``thawkit`` (:mod:`thawkit.building`):
``thawkit.generic_layout``, ``thawkit.layout_from_prefixes``, ``thawkit.last_linear``,
``thawkit.new_classifier`` and ``thawkit.set_submodule``. Their old names here are deprecated
aliases that warn.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import thawkit
from thawkit import BackboneSpec, DataConfig, Layout, hookimpl

if TYPE_CHECKING:
    from torch import nn

__getattr__ = thawkit.moved_names(__name__, {
    name: f"thawkit:{name}"
    for name in ("generic_layout", "last_linear", "layout_from_prefixes", "new_classifier", "set_submodule")})


@hookimpl(trylast=True)
def thawkit_describe_layout(model: nn.Module, spec: BackboneSpec | None) -> Layout:
    return thawkit.generic_layout(model)


@hookimpl(trylast=True)
def thawkit_replace_head(model: nn.Module, layout: Layout, num_classes: int, dropout: float,
                         keep_aux: bool) -> nn.Module | None:
    if not layout.classifiers:
        return None
    for path in layout.classifiers:
        thawkit.set_submodule(model, path, thawkit.new_classifier(model.get_submodule(path),
                                                                   num_classes, dropout))
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
