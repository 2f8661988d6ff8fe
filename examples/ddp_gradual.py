"""Gradual unfreezing under DDP: `torchrun --nproc_per_node=2 examples/ddp_gradual.py`.

Run with plain `python` it makes a one-process group, so it also works as a smoke test.
"""
import os
import tempfile

import thawkit
import torch
import torch.distributed as dist
from thawkit.plugins.distributed import DistributedAdapted
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

if not dist.is_initialized():  # unless the host already made the group
    if "RANK" in os.environ:  # started by torchrun
        dist.init_process_group("gloo")  # "nccl" on GPUs, with torch.cuda.set_device(local_rank)
    else:
        store = f"file://{tempfile.mkdtemp()}/store"
        dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
rank = dist.get_rank()
torch.manual_seed(0)  # the same initial weights in every process (DDP also broadcasts rank 0's)
model = thawkit.load_backbone("torchvision:resnet18", weights=None)
adapted = thawkit.adapt(model, "gradual", num_classes=10, every=1)
optimizer = adapted.optimizer("sgd", lr=0.01, momentum=0.9)  # built once: holds every phase's
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)
ddp = DistributedAdapted(adapted)  # device_ids=[local_rank] on GPUs
data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
sampler = DistributedSampler(data, shuffle=True, seed=0)  # each process its part of the data
loader = DataLoader(data, batch_size=4, sampler=sampler)
for epoch in range(3):
    ddp.on_epoch_start(epoch)  # thaws a block and re-wraps the model when the trainable set changes
    sampler.set_epoch(epoch)
    ddp.module.train()
    for images, labels in loader:
        loss = torch.nn.functional.cross_entropy(ddp.module(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scheduler.step()
    if rank == 0:  # one process writes the checkpoint
        checkpoint = {"model": adapted.model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "thawkit": ddp.state_dict()}
        print(f"epoch {epoch}: DDP wraps so far {ddp.wraps}; {adapted.plan.summary()}")
# every process holds the same weights: thawed blocks were all-reduced since they thawed
sums = [None] * dist.get_world_size()
dist.all_gather_object(sums, [float(p.detach().double().sum()) for p in adapted.model.parameters()])
assert all(s == sums[0] for s in sums), "processes disagree"
if rank == 0:
    print(f"identical weights in all {len(sums)} process(es)")
dist.destroy_process_group()
