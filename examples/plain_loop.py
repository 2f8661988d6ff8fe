"""Gradual unfreezing in a plain PyTorch loop, with a checkpoint and an exact resume.

thawkit owns the head, which parameters train when (the phases), the norm policy and the named
parameter groups; this loop owns the data, the loss, the optimizer class, the schedule, devices
and checkpoints. Random weights and random 32 px images stand in for yours.
"""
import tempfile

import thawkit
import torch
import torch.nn.functional as F

EPOCHS, STEPS = 3, 2
pm = thawkit.get_plugin_manager()  # this program's own plugins; without pm=, the shared manager


def build():
    model = thawkit.load_backbone("torchvision:resnet18", weights=None, pm=pm)  # weights="DEFAULT"
    adapted = thawkit.adapt(model, "gradual", num_classes=10, every=1, pm=pm)  # new head, all frozen
    groups = adapted.param_groups("sgd", lr=0.05, weight_decay=1e-4, layer_decay=0.7)
    optimizer = torch.optim.SGD(groups, momentum=0.9)  # any optimizer class takes the named groups
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS * STEPS)
    return adapted, optimizer, scheduler


generator = torch.Generator().manual_seed(0)
data = [(torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator))
        for _ in range(STEPS)]


def train(adapted, optimizer, scheduler, epochs):
    for epoch in epochs:
        adapted.on_epoch_start(epoch)  # the phase of this epoch: layer4 thaws at 1, layer3 at 2
        adapted.model.train()  # frozen BatchNorms stay in eval mode (thawkit's forward pre-hook)
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        for images, labels in data:
            loss = F.cross_entropy(adapted.model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()  # every group is scheduled from the start, frozen or not
        trainable = sum(p.numel() for p in adapted.model.parameters() if p.requires_grad)
        print(f"epoch {epoch}: phase {adapted.phase}, {trainable:,} parameters train, "
              f"lr head {lrs['head']:.4f}, layer4 {lrs['layer4']:.4f} at the start")


torch.manual_seed(0)
adapted, optimizer, scheduler = build()
print("groups:", ", ".join(g["name"] for g in optimizer.param_groups))
train(adapted, optimizer, scheduler, range(1))
path = f"{tempfile.mkdtemp()}/checkpoint.pt"
torch.save({"model": adapted.model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "thawkit": adapted.state_dict()}, path)
train(adapted, optimizer, scheduler, range(1, EPOCHS))

# resume: build the same way, load your state, then thawkit's (phase, checked trainable set)
again, optimizer, scheduler = build()
checkpoint = torch.load(path, weights_only=True)
again.model.load_state_dict(checkpoint["model"])
optimizer.load_state_dict(checkpoint["optimizer"])
scheduler.load_state_dict(checkpoint["scheduler"])
again.load_state_dict(checkpoint["thawkit"])
print(f"resumed from the end of epoch {checkpoint['thawkit']['epoch']}")
train(again, optimizer, scheduler, range(1, EPOCHS))
same = all(torch.equal(a, b) for a, b in zip(adapted.model.state_dict().values(),
                                             again.model.state_dict().values()))
print("resumed run equals the uninterrupted one:", same)
assert same
