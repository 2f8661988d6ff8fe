"""Gradual unfreezing under DDP: `torchrun --nproc_per_node=2 examples/ddp_gradual.py`.

Run with plain `python` it makes a one-process group, so it also works as a smoke test.
"""
import os
import tempfile

import thawkit
import torch
import torch.distributed as dist
from thawkit.plugins.distributed import DistributedAdapted

if "RANK" in os.environ:  # started by torchrun
    dist.init_process_group("gloo")  # "nccl" on GPUs
else:
    store = f"file://{tempfile.mkdtemp()}/store"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
model = thawkit.load_backbone("torchvision:resnet18", weights=None)
adapted = thawkit.adapt(model, "gradual", num_classes=10, every=1)
optimizer = adapted.optimizer("sgd", lr=0.01, momentum=0.9)
ddp = DistributedAdapted(adapted)  # device_ids=[local_rank] on GPUs
for epoch in range(3):
    ddp.on_epoch_start(epoch)  # re-wraps the model when a block thaws
    ddp.module.train()
    images, labels = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))  # a DistributedSampler
    loss = torch.nn.functional.cross_entropy(ddp.module(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if dist.get_rank() == 0:
        print(f"epoch {epoch}: DDP wraps so far {ddp.wraps}; {adapted.plan.summary()}")
dist.destroy_process_group()
