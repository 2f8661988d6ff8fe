"""A small CNN for the demo and the tests: ``python:thawkit.plugins.train.demo_model:small_cnn``.

Top-level children ``stem``, ``block1``..``block3`` and ``fc`` give core's
generic layout a stem, three blocks and a head, with BatchNorm throughout (so
the frozen-norm policy matters), in about 60k parameters at ``width=16``.
"""
from __future__ import annotations

from torch import nn


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16, dropout: float = 0.0):
        super().__init__()
        w = width
        self.stem = nn.Sequential(*_conv(3, w))
        self.block1 = nn.Sequential(*_conv(w, 2 * w, 2), *_conv(2 * w, 2 * w))
        self.block2 = nn.Sequential(*_conv(2 * w, 4 * w, 2), *_conv(4 * w, 4 * w))
        self.block3 = nn.Sequential(*_conv(4 * w, 4 * w, 2), *_conv(4 * w, 4 * w))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.block3(self.block2(self.block1(self.stem(x))))))


def small_cnn(num_classes: int = 10, width: int = 16, dropout: float = 0.0) -> SmallCNN:
    """Factory for the ``python:`` source: ``small_cnn(num_classes=5, width=8)``."""
    return SmallCNN(num_classes=num_classes, width=width, dropout=dropout)
