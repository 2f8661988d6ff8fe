"""DDP-safe thawing.

``DistributedDataParallel`` registers only the parameters that require
gradients when it is constructed: a block thawed afterwards is never
all-reduced and the ranks silently drift apart. :class:`DistributedAdapted`
re-wraps the model whenever a phase change alters the trainable set. The
optimizer is untouched (it already holds every parameter that will ever
thaw), so its state and any LR scheduler carry on unchanged. ``thawkit train``
uses it under torchrun (``thawkit.plugins.train.ddp``).

Example (under ``torchrun``)::

    adapted = thawkit.adapt(model, "gradual", num_classes=10, every=2)
    optimizer = adapted.optimizer("adamw", lr=1e-3)
    ddp = thawkit.plugins.distributed.DistributedAdapted(adapted, device_ids=[local_rank])
    for epoch in range(epochs):
        ddp.on_epoch_start(epoch)        # re-wraps when a block thaws
        for x, y in loader:
            loss = criterion(ddp.module(x), y)
            ...
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from thawkit import Adapted


class DistributedAdapted:
    """An :class:`~thawkit.Adapted` model wrapped in DDP, re-wrapped on every thaw."""

    def __init__(self, adapted: Adapted, **ddp_kwargs: Any) -> None:
        self.adapted = adapted
        self.ddp_kwargs = ddp_kwargs
        self.wraps = 0
        self.module: nn.Module = self._wrap()

    def _wrap(self) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        self.wraps += 1
        self._wrapped = self.adapted.trainable
        return DistributedDataParallel(self.adapted.model, **self.ddp_kwargs)

    def refresh(self) -> bool:
        """Wrap the model afresh if its trainable set is not the one wrapped; True when it did
        (for a loop that calls ``adapted.on_epoch_start`` itself)."""
        if self.adapted.trainable == self._wrapped:
            return False
        self.module = self._wrap()
        return True

    def on_epoch_start(self, epoch: int) -> bool:
        """Advance the strategy; when the trainable set changed, wrap the model afresh."""
        changed = self.adapted.on_epoch_start(epoch)
        self.refresh()
        return changed

    def state_dict(self) -> dict[str, Any]:
        return self.adapted.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adapted.load_state_dict(state)
        self.refresh()
