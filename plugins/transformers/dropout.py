"""Dropout off in frozen layers: a frozen layer then computes the same output for the same input
in every step, as a layer whose output could be cached would. Opt-in (transformers' own training
keeps dropout active everywhere): ``ThawkitCallback(adapted, frozen_dropout="off")``.

Every module inside a frozen layer block (one element of a stack), except norm layers (thawkit's
norm policy decides those), gets a forward pre-hook that switches it to inference mode before each
forward pass, which also turns off the functional dropout attention modules apply when
``self.training`` is set. The hook is removed when the layer thaws.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thawkit import Adapted
    from torch import nn


def _inference(module: nn.Module, args: tuple[Any, ...]) -> None:
    module.training = False


def apply_frozen_dropout(adapted: Adapted, off: bool) -> list[str]:
    """Put the modules of frozen layers in inference mode (``off``) or release them; returns the
    frozen layer blocks."""
    from thawkit import is_norm

    trainable = adapted.trainable
    frozen = []
    for block in adapted.layout.blocks:
        is_frozen = off and not any(p in trainable for p in block.params)
        if is_frozen:
            frozen.append(block.name)
        for path in block.modules:
            for module in adapted.model.get_submodule(path).modules():
                if is_norm(module):
                    continue
                hooks = module._forward_pre_hooks
                for key in [k for k, h in hooks.items() if h is _inference]:
                    del hooks[key]
                if is_frozen:
                    module.register_forward_pre_hook(_inference)
                    module.training = False
                else:
                    module.training = adapted.model.training
    return frozen
