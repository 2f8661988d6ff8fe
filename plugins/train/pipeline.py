"""The training pipeline's base: batches in, logits out. The feature cache (``cache.py``) and DDP
(``ddp.py``) extend it; the loop (``loop.py``) drives whichever the run uses."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .session import Session


class Pipeline:
    """Batches in, logits out: the data reader's inputs through the whole model."""

    def __init__(self, session: Session):
        self.model = session.model
        self.loaders = session.loaders
        self.device = session.device
        self.reader = session.reader

    def _to_device(self, batches: Iterable) -> Iterator:
        nb = self.device.type == "cuda"
        for x, y in batches:
            yield self.reader.move(x, self.device), y.to(self.device, non_blocking=nb)

    def train_batches(self, epoch: int, skip: int) -> Iterator:
        self.loaders.batches.set_epoch(epoch, skip)
        return self._to_device(self.loaders.train)

    def val_batches(self) -> Iterator:
        return self._to_device(self.loaders.val)

    def forward(self, x):
        """The logits of the inputs ``x``, as the data reader runs the model on them."""
        return self.reader.forward(self.model, x)

    def phase_changed(self, adapted: Any) -> None:
        """Called when the trainable set changes (and on start); nothing is cached here."""

    def status(self, phase: int) -> str | None:
        """A line for the log about how phase ``phase`` gets its batches (None: nothing to say)."""
        return None

    def close(self) -> None:
        """Called when the run ends, however it ends: release what the pipeline holds."""
