"""Splits of torchvision classifiers at block boundaries, for caching frozen features.

Each family's forward pass is written out as its steps, in order (the family's
own submodules, and :class:`thawkit.plugins.split.ForwardStep` for what the forward does
inline: flatten, pooling, class token); :func:`thawkit.plugins.split.split_sequential` then
cuts the steps below a block. Only torchvision's own classes are split: a
subclass may override ``forward``.

Families without a split (``None``, so no cache):

* googlenet and inception_v3: the input transform and the auxiliary heads make
  the forward pass more than a sequence of steps;
* quantizable variants and other subclasses: their ``forward`` may differ.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from thawkit.plugins.split import ForwardStep, split_sequential

from . import layouts as tvl

if TYPE_CHECKING:
    from torch import nn

    from thawkit import Layout, Split


def _children(module: nn.Module) -> list[nn.Module]:
    return list(module.children())


def _flatten() -> nn.Module:
    import torch

    return ForwardStep(lambda x: torch.flatten(x, 1))


def _spatial_mean() -> nn.Module:
    return ForwardStep(lambda x: x.mean([2, 3]))


def _vit_steps(model: nn.Module) -> list[nn.Module]:
    import torch

    def tokens(x):
        x = model._process_input(x)
        return torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)

    encoder = model.encoder
    return [ForwardStep(tokens, model.conv_proj, model.class_token),
            ForwardStep(lambda x: x + encoder.pos_embedding, encoder.pos_embedding),
            encoder.dropout, *_children(encoder.layers), encoder.ln,
            ForwardStep(lambda x: x[:, 0]), *_children(model.heads)]


def _densenet_steps(model: nn.Module) -> list[nn.Module]:
    import torch.nn.functional as F

    return [*_children(model.features), ForwardStep(lambda x: F.relu(x, inplace=True)),
            ForwardStep(lambda x: F.adaptive_avg_pool2d(x, (1, 1))), _flatten(), model.classifier]


def _mobilenet_v2_steps(model: nn.Module) -> list[nn.Module]:
    import torch.nn.functional as F

    return [*_children(model.features), ForwardStep(lambda x: F.adaptive_avg_pool2d(x, (1, 1))),
            _flatten(), *_children(model.classifier)]


def _steps(model: nn.Module, family: str) -> list[nn.Module] | None:
    m = model
    if family == "resnet":
        return [m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4,
                m.avgpool, _flatten(), m.fc]
    if family in ("vgg", "alexnet"):
        return [*_children(m.features), m.avgpool, _flatten(), *_children(m.classifier)]
    if family in ("efficientnet", "mobilenet_v3"):
        return [*_children(m.features), m.avgpool, _flatten(), *_children(m.classifier)]
    if family == "convnext":
        return [*_children(m.features), m.avgpool, *_children(m.classifier)]
    if family == "regnet":
        return [m.stem, *_children(m.trunk_output), m.avgpool, _flatten(), m.fc]
    if family == "swin":
        return [*_children(m.features), m.norm, m.permute, m.avgpool, m.flatten, m.head]
    if family == "maxvit":
        return [m.stem, *_children(m.blocks), *_children(m.classifier)]
    if family == "vit":
        return _vit_steps(m)
    if family == "densenet":
        return _densenet_steps(m)
    if family == "mobilenet_v2":
        return _mobilenet_v2_steps(m)
    if family == "mnasnet":
        return [*_children(m.layers), _spatial_mean(), *_children(m.classifier)]
    if family == "shufflenet":
        return [m.conv1, m.maxpool, m.stage2, m.stage3, m.stage4, m.conv5, _spatial_mean(), m.fc]
    if family == "squeezenet":
        return [*_children(m.features), *_children(m.classifier), _flatten()]
    return None  # googlenet, inception: see the module docstring


def split(model: nn.Module, layout: Layout, block: str) -> Split | None:
    """The split of a torchvision classifier below ``block``, or ``None``."""
    fam = tvl.family_of(model)
    if fam is None or not fam[1]:
        return None
    steps = _steps(model, fam[0])
    if steps is None:
        return None
    return split_sequential(model, layout, block, steps)
