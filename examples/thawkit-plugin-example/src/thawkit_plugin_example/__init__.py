"""An example thawkit plugin, registered through the ``thawkit`` entry point ``pocket``.

It adds the source ``pocket`` (``thawkit.load_backbone("pocket:pocket-s")``), the layout,
head and data config of its models, and the strategy ``budget``. Each hook below is an
ordinary function marked with ``@thawkit.hookimpl`` and named after a hook of
``thawkit.hookspecs``; the contract of each is checked by ``tests/test_contract.py``.
"""
from __future__ import annotations

from typing import Any

import thawkit
from thawkit import layout_from_prefixes
from torch import nn

from .strategy import Budget
from .zoo import PocketNet, PocketZoo

__all__ = ["Budget", "PocketNet", "PocketZoo"]


@thawkit.hookimpl
def thawkit_register_sources(register: Any) -> None:
    register("pocket", PocketZoo())


@thawkit.hookimpl
def thawkit_register_strategies(register: Any) -> None:
    register(Budget)


@thawkit.hookimpl
def thawkit_describe_layout(model: nn.Module, spec: Any) -> thawkit.Layout | None:
    if not isinstance(model, PocketNet):
        return None  # not ours: another plugin (or thawkit's generic layout) answers
    return layout_from_prefixes(
        model, stem=["stem"],
        blocks=[(f"stage{i}", [f"stages.{i}"]) for i in range(len(model.stages))],
        neck=["norm"], head=["head"], classifiers=[model.classifier_path()], source="pocket")


@thawkit.hookimpl
def thawkit_replace_head(model: nn.Module, layout: thawkit.Layout, num_classes: int, dropout: float,
                         keep_aux: bool) -> nn.Module | None:
    if not isinstance(model, PocketNet):
        return None
    old = model.get_submodule(layout.classifiers[0]).weight
    # where the backbone is: the meta device for plans, the GPU, half precision...
    linear = nn.Linear(old.shape[1], num_classes, device=old.device, dtype=old.dtype)
    model.head = nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else linear
    return model


@thawkit.hookimpl
def thawkit_data_config(model: nn.Module, spec: Any) -> thawkit.DataConfig | None:
    if not isinstance(model, PocketNet):
        return None
    return thawkit.DataConfig(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                              crop_pct=1.0, origin="pocket")
