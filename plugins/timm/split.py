"""Splits of timm models at block boundaries, for caching frozen features.

timm models compute ``forward_head(forward_features(x))``; for the
architectures below, both are written out as their steps, in order, and
:func:`thawkit.plugins.split.split_sequential` cuts them below a block. ``forward_head``'s
dropout before the classifier (``drop_rate``, ``head_drop``) stays in the rest, so
the pre-logits features of a head-only run are cached even with head dropout.

Only these exact classes are split (a subclass such as the distilled DeiT changes
``forward_head``): ``VisionTransformer``, ``ResNet``, ``ConvNeXt``,
``EfficientNet``, ``MobileNetV3``, ``RegNet`` and ``SwinTransformer``. Every
other timm model gets ``None`` (no cache): its forward pass is not known to be a
sequence of steps thawkit can cut without changing it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from thawkit.plugins.split import ForwardStep, split_sequential
from torch import nn

if TYPE_CHECKING:
    from thawkit import Layout, Split


class HeadDropout(nn.Module):
    """``forward_head``'s inline ``F.dropout``: rate and train mode read from the model, as timm does."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self._model = [model]  # not registered: the model is no submodule of its own step

    @property
    def p(self) -> float:
        return float(self._model[0].drop_rate)

    def forward(self, x):
        import torch.nn.functional as F

        model = self._model[0]
        return F.dropout(x, p=self.p, training=model.training) if self.p > 0 else x


def _vit(m: nn.Module) -> list[nn.Module]:
    return [m.patch_embed, ForwardStep(m._pos_embed, m.cls_token, m.reg_token, m.pos_embed, m.pos_drop),
            m.patch_drop, m.norm_pre, *m.blocks, m.norm, ForwardStep(m.pool, m.attn_pool), m.fc_norm,
            m.head_drop, m.head]


def _resnet(m: nn.Module) -> list[nn.Module]:
    return [m.conv1, m.bn1, m.act1, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4, m.global_pool,
            HeadDropout(m), m.fc]


def _convnext(m: nn.Module) -> list[nn.Module]:
    h = m.head
    return [m.stem, *m.stages, m.norm_pre, h.global_pool, h.norm, h.flatten, h.pre_logits, h.drop, h.fc]


def _classifier_head(h: nn.Module) -> list[nn.Module]:
    """timm's ``ClassifierHead``: pool, dropout, classifier, flatten (after a Linear, a no-op)."""
    return [h.global_pool, h.drop, h.fc, h.flatten]


def _efficientnet(m: nn.Module) -> list[nn.Module]:
    return [m.conv_stem, m.bn1, *m.blocks, m.conv_head, m.bn2, m.global_pool, HeadDropout(m), m.classifier]


def _mobilenetv3(m: nn.Module) -> list[nn.Module]:
    return [m.conv_stem, m.bn1, *m.blocks, m.global_pool, m.conv_head, m.norm_head, m.act2, m.flatten,
            HeadDropout(m), m.classifier]


def _regnet(m: nn.Module) -> list[nn.Module]:
    return [m.stem, m.s1, m.s2, m.s3, m.s4, m.final_conv, *_classifier_head(m.head)]


def _swin(m: nn.Module) -> list[nn.Module]:
    return [m.patch_embed, *m.layers, m.norm, *_classifier_head(m.head)]


_STEPS = {
    "timm.models.vision_transformer.VisionTransformer": _vit,
    "timm.models.resnet.ResNet": _resnet,
    "timm.models.convnext.ConvNeXt": _convnext,
    "timm.models.efficientnet.EfficientNet": _efficientnet,
    "timm.models.mobilenetv3.MobileNetV3": _mobilenetv3,
    "timm.models.regnet.RegNet": _regnet,
    "timm.models.swin_transformer.SwinTransformer": _swin,
}


def split(model: nn.Module, layout: Layout, block: str) -> Split | None:
    """The split of a timm model below ``block``, or ``None`` (see the module docstring)."""
    cls = type(model)
    steps = _STEPS.get(f"{cls.__module__}.{cls.__qualname__}")
    if steps is None:
        return None
    try:
        found = steps(model)
    except AttributeError:  # another timm version's attribute names: no split, not a wrong one
        return None
    return split_sequential(model, layout, block, found)
