"""The loops the benchmarks compare: hand-written ones (the tutorial's style) and thawkit's.

Each function does one timed unit of work and returns what the comparison needs
(an accuracy, a loss); ``run.py`` times them interleaved.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import thawkit
from thawkit.plugins.split import frozen_prefix
from thawkit.plugins.train.features import FeatureCache


# ------------------------------------------------------------------------ data
@dataclass
class Data:
    """Synthetic images, learnable (class prototypes plus noise), with a fixed batch order."""

    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    batch: int
    classes: int

    def order(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(1000 + epoch)
        perm = torch.randperm(len(self.y), generator=g).tolist()
        return [perm[i:i + self.batch] for i in range(0, len(perm), self.batch)]

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self.order(epoch):
            yield self.x[idx], self.y[idx]


def synthetic(n: int, n_val: int, size: int, batch: int, classes: int = 10) -> Data:
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(classes, 3, size, size, generator=g)

    def draw(k: int):
        y = torch.randint(0, classes, (k,), generator=g)
        return protos[y] + 1.5 * torch.randn(k, 3, size, size, generator=g), y

    x, y = draw(n)
    x_val, y_val = draw(n_val)
    return Data(x, y, x_val, y_val, batch, classes)


# ---------------------------------------------------------------- models
def resnet18(classes: int = 1000) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=classes)


def vit_tiny(size: int) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=size)


def hand_prepare(model: nn.Module, strategy: str, classes: int) -> tuple[nn.Module, list]:
    """The tutorial: ``requires_grad = False``, a new classifier, the trainable parameters (weight
    decay on weights only, as thawkit does, so both train the same way)."""
    for p in model.parameters():
        p.requires_grad = strategy == "full"
    if hasattr(model, "fc"):
        model.fc = nn.Linear(model.fc.in_features, classes)
        # initialised as thawkit initialises a new head, so that both runs start alike
        nn.init.trunc_normal_(model.fc.weight, std=0.02)
        nn.init.zeros_(model.fc.bias)
        top = [model.layer4] if strategy == "last-block" else []
    else:  # timm ViT
        model.reset_classifier(classes)
        top = [model.blocks[-1], model.norm] if strategy == "last-block" else []
    for module in top:
        for p in module.parameters():
            p.requires_grad = True
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, [{"params": [p for p in trainable if p.ndim > 1]},
                   {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0}]


def step(model_or_rest: Callable, optimizer: torch.optim.Optimizer, x, y) -> float:
    loss = F.cross_entropy(model_or_rest(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


# ------------------------------------------------------------ 1. overhead
def overhead_hand(strategy: str, data: Data, steps: int) -> Callable[[], float]:
    model, params = hand_prepare(resnet18(), strategy, data.classes)
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    model.train()
    batches = list(data.batches(0))

    def run() -> float:
        return sum(step(model, optimizer, *batches[i % len(batches)]) for i in range(steps))
    return run


def overhead_thawkit(strategy: str, data: Data, steps: int) -> Callable[[], float]:
    adapted = thawkit.adapt(resnet18(), strategy, num_classes=data.classes)
    optimizer = adapted.optimizer("adamw", lr=1e-3, weight_decay=0.05)
    batches = list(data.batches(0))
    epoch = [0]

    def run() -> float:
        adapted.on_epoch_start(epoch[0])  # once per timed unit, as once per epoch
        epoch[0] += 1
        adapted.model.train()
        return sum(step(adapted.model, optimizer, *batches[i % len(batches)]) for i in range(steps))
    return run


# ----------------------------------------------------- 2. linear probe
def probe_hand(build: Callable[[], nn.Module], data: Data, epochs: int) -> float:
    """Head-only the careful hand way: backbone in eval mode, features recomputed every epoch."""
    model, params = hand_prepare(build(), "head-only", data.classes)
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    model.eval()
    top1 = 0.0
    for epoch in range(epochs):
        for x, y in data.batches(epoch):
            step(model, optimizer, x, y)
        with torch.no_grad():  # validation every epoch, as a training run reports it
            top1 = accuracy(torch.cat([model(x) for x in data.x_val.split(256)]), data.y_val)
    return top1


def probe_cached(build: Callable[[], nn.Module], data: Data, epochs: int, *,
                 dtype: str = "float32") -> float:
    """Head-only with thawkit: features of the frozen prefix computed once, then the head."""
    adapted = thawkit.adapt(build(), "head-only", num_classes=data.classes)
    optimizer = adapted.optimizer("adamw", lr=1e-3, weight_decay=0.05)
    frozen = frozen_prefix(adapted)
    assert frozen, frozen.reason
    rest = frozen.split.rest
    train = FeatureCache(frozen.split.prefix, DataLoader(TensorDataset(data.x, data.y), batch_size=256),
                         dtype=dtype)
    val = FeatureCache(frozen.split.prefix, DataLoader(TensorDataset(data.x_val, data.y_val),
                                                       batch_size=256), dtype=dtype)
    top1 = 0.0
    for epoch in range(epochs):
        adapted.model.train()
        for x, y in train.batches(data.order(epoch)):
            step(rest, optimizer, x, y)
        adapted.model.eval()
        with torch.no_grad():
            x, y = val.take(list(range(len(val))))
            top1 = accuracy(rest(x), y)
    return top1


# ------------------------------------------------------ 3. last block
def last_block(build: Callable[[], nn.Module], data: Data, epochs: int, cached: bool) -> float:
    adapted = thawkit.adapt(build(), "last-block", num_classes=data.classes)
    optimizer = adapted.optimizer("adamw", lr=1e-3, weight_decay=0.05)
    adapted.model.train()
    if not cached:
        for epoch in range(epochs):
            for x, y in data.batches(epoch):
                step(adapted.model, optimizer, x, y)
        return 0.0
    frozen = frozen_prefix(adapted)
    assert frozen, frozen.reason
    train = FeatureCache(frozen.split.prefix, DataLoader(TensorDataset(data.x, data.y), batch_size=256))
    for epoch in range(epochs):
        for x, y in train.batches(data.order(epoch)):
            step(frozen.split.rest, optimizer, x, y)
    return 0.0


def step_flops(build: Callable[[], nn.Module], strategy: str, size: int) -> dict[str, int]:
    """FLOPs per sample of a training step uncached (``step``) and cached (``cached_step``: the
    rest's forward and backward), and of the prefix's forward (``prefix``, once per image)."""
    from torch.utils.flop_counter import FlopCounterMode

    adapted = thawkit.adapt(build(), strategy, num_classes=10)
    adapted.model.train()
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 1])  # train-mode BatchNorm needs 2
    frozen = frozen_prefix(adapted)
    out = {}
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(adapted.model(x), y).backward()
    out["step"] = counter.get_total_flops() // 2
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        features = frozen.split.prefix(x)
    out["prefix"] = counter.get_total_flops() // 2
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(frozen.split.rest(features), y).backward()
    out["cached_step"] = counter.get_total_flops() // 2
    return out
