"""Dropout off in frozen layers: a frozen layer then computes the same output for the same input
in every step, as a layer whose output could be cached would. Opt-in (transformers' own training
keeps dropout active everywhere): ``ThawkitCallback(adapted, frozen_dropout="off")``.

Every module inside a frozen layer block (one element of a stack), except norm layers (thawkit's
norm policy decides those), is kept in inference mode under ``model.train()`` by
:func:`thawkit.set_inference`, the norm policy's own mechanism. That also turns off the functional
dropout attention modules apply when ``self.training`` is set. The layer is released when it thaws.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thawkit import Adapted


def apply_frozen_dropout(adapted: Adapted, off: bool) -> list[str]:
    """Put the modules of frozen layers in inference mode (``off``) or release them; returns the
    frozen layer blocks."""
    from thawkit import is_norm, set_inference

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
                set_inference(module, is_frozen, adapted.model.training)
    return frozen
