"""Benchmark 4: the same gradual job by ``thawkit train`` and by a hand-written loop.

digits 0-4 from ``thawkit demo``'s data writer as ImageFolders, torchvision resnet18
(random init) at 32 px, AdamW at a constant rate, the head in epoch 1 and one more
block in each epoch after; both evaluate and write a checkpoint every epoch.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader

import thawkit
from loops import step

SIZE, BATCH, LR, WD = 32, 32, 1e-3, 0.05


def hand(data: Path, out: Path, epochs: int) -> dict[str, float]:
    """The tutorial's loop: ImageFolder, requires_grad flags thawed by hand, torch.save per epoch."""
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(int(SIZE / 0.875)), T.CenterCrop(SIZE), T.ToTensor(),
                    T.Normalize([0.5] * 3, [0.5] * 3)])
    train, val = datasets.ImageFolder(data / "train", tf), datasets.ImageFolder(data / "val", tf)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(train.classes))
    units = [[model.fc], [model.layer4], [model.layer3], [model.layer2], [model.layer1],
             [model.conv1, model.bn1]]
    for p in model.parameters():
        p.requires_grad = False
    # every parameter from the start: thawing only flips requires_grad
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    val_loader = DataLoader(val, batch_size=BATCH)
    out.mkdir(parents=True, exist_ok=True)
    saving = 0.0
    top1 = 0.0
    for epoch in range(epochs):
        for module in units[min(epoch, len(units) - 1)]:
            for p in module.parameters():
                p.requires_grad = True
        model.train()
        for x, y in loader:
            step(model, optimizer, x, y)
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += int((model(x).argmax(1) == y).sum())
        top1 = correct / len(val)
        started = time.perf_counter()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                   out / "checkpoint.pt")
        saving += time.perf_counter() - started
    return {"top1": top1, "writes": saving}


def with_thawkit(data: Path, out: Path, epochs: int) -> dict[str, float]:
    """``thawkit train`` on the recipe of the same job; seconds spent writing files measured."""
    from thawkit.plugins.train import loop, train

    pm = thawkit.get_plugin_manager(entrypoints=False)
    recipe = thawkit.validate_recipe({
        "backbone": {"source": "torchvision", "name": "resnet18"},
        "strategy": {"name": "gradual", "every": 1},
        "optimizer": {"name": "adamw", "lr": LR, "weight_decay": WD},
        "schedule": {"name": "constant"},
        "data": {"train": str(data / "train"), "val": str(data / "val"), "image_size": SIZE,
                 "mean": [0.5] * 3, "std": [0.5] * 3, "augment": False, "batch_size": BATCH},
        "train": {"epochs": epochs, "seed": 0, "device": "cpu", "output": str(out)},
    }, pm=pm)
    spent = {"writes": 0.0, "plot": 0.0}

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - started
        return wrapper

    saved = loop.save_checkpoint, loop.save_weights, loop.Trainer._plot
    loop.save_checkpoint = timed(loop.save_checkpoint, "writes")
    loop.save_weights = timed(loop.save_weights, "writes")
    loop.Trainer._plot = timed(loop.Trainer._plot, "plot")
    try:
        train(recipe, pm=pm, run_dir=out, log=lambda line: None, progress_bar=False)
    finally:
        loop.save_checkpoint, loop.save_weights, loop.Trainer._plot = saved
    from thawkit.plugins.train import summary

    return {"top1": summary(out)["final_top1"], **spent}
