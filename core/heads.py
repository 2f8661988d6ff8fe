"""Building blocks for head replacement, public so that plugins build heads the way core does."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


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
