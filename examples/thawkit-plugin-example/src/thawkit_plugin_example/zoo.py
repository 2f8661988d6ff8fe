"""The ``pocket`` source: small CNNs for 32 px images, built without published weights."""
from __future__ import annotations

import fnmatch
from typing import Any

import thawkit
import torch
from torch import nn

#: model name -> builder options
MODELS: dict[str, dict[str, int]] = {"pocket-s": {"width": 8, "depth": 2},
                                     "pocket-m": {"width": 16, "depth": 4}}


def _conv(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class PocketNet(nn.Module):
    """A stem, ``depth`` stages, a LayerNorm neck over pooled features, and a linear head."""

    def __init__(self, width: int = 8, depth: int = 2, num_classes: int = 10):
        super().__init__()
        self.stem = _conv(3, width)
        self.stages = nn.ModuleList(_conv(width, width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head: nn.Module = nn.Linear(width, num_classes)

    def classifier_path(self) -> str:
        """``head``, or ``head.1`` once a new head with dropout is in place."""
        return "head.1" if isinstance(self.head, nn.Sequential) else "head"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(self.norm(x.mean((2, 3))))


class PocketZoo:
    """``pocket:NAME``; options: ``device`` (``"meta"`` builds without memory) and the builder's
    ``width``, ``depth`` and ``num_classes``."""

    description = "pocket-sized CNNs for 32 px images (no published weights)"

    def list_models(self, pattern: str | None = None) -> list[str]:
        return [n for n in sorted(MODELS) if pattern is None or fnmatch.fnmatchcase(n, pattern)]

    def load(self, name: str, options: dict[str, Any]) -> nn.Module:
        if name not in MODELS:
            raise thawkit.UnknownNameError("pocket model", name, MODELS, where="pocket source")
        options = dict(options)  # never change the caller's dict
        device = options.pop("device", None)
        unknown = sorted(set(options) - {"width", "depth", "num_classes"})
        if unknown:
            raise thawkit.ConfigError(f"pocket source: unknown option(s) {', '.join(unknown)}; the "
                                      "options are device, width, depth and num_classes")
        with torch.device(device or "cpu"):
            return PocketNet(**{**MODELS[name], **options})
