"""Two CPU ranks (gloo): gradual thawing under DDP keeps every rank's weights identical."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import thawkit
from thawkit.plugins.distributed import DistributedAdapted


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU())
        self.block1 = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
        self.block2 = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                                          torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.block2(self.block1(self.stem(x))))


def _worker(rank, world, port, rewrap, out_dir, strategy=("gradual", {"every": 1})):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    pm = thawkit.get_plugin_manager(entrypoints=False)
    name, params = strategy
    adapted = thawkit.adapt(Net(), name, pm=pm, **params)
    initial = {k: v.detach().clone() for k, v in adapted.model.state_dict().items()}
    opt = adapted.optimizer("sgd", lr=0.1, weight_decay=0.0)
    if rewrap:
        ddp = DistributedAdapted(adapted)
    else:  # the naive way: wrap once, thaw later
        ddp = type("Naive", (), {})()
        ddp.module = torch.nn.parallel.DistributedDataParallel(adapted.model)
        ddp.on_epoch_start = adapted.on_epoch_start
    gen = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    for epoch in range(4):
        ddp.on_epoch_start(epoch)
        ddp.module.train()
        for _ in range(3):
            x = torch.randn(4, 3, 8, 8, generator=gen)
            y = torch.randint(0, 4, (4,), generator=gen)
            loss = torch.nn.functional.cross_entropy(ddp.module(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    # parameters only: thawed BatchNorm statistics follow DDP's broadcast_buffers (synced from rank 0
    # at each forward, so the last local update differs; SyncBatchNorm makes them exact)
    torch.save({k: v.detach().clone() for k, v in adapted.model.named_parameters()},
               os.path.join(out_dir, f"rank{rank}.pt"))
    if strategy[0] != "gradual":  # the adapted model's whole state, before and after
        torch.save({"initial": initial, "final": adapted.model.state_dict()},
                   os.path.join(out_dir, f"state{rank}.pt"))
    dist.destroy_process_group()


def _run(tmp_path, rewrap, *strategy, start_method="spawn"):
    mp.start_processes(_worker, args=(2, _free_port(), rewrap, str(tmp_path), *strategy), nprocs=2,
                       join=True, start_method=start_method)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_ddp_ranks_hold_identical_weights_after_gradual_thawing(tmp_path):
    assert _run(tmp_path, rewrap=True) == []


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_control_naive_ddp_wrap_lets_thawed_blocks_drift(tmp_path):
    """The pitfall the wrapper removes: blocks thawed after the DDP wrap are never all-reduced."""
    differing = _run(tmp_path, rewrap=False)
    assert any(k.startswith(("block1", "block2", "stem")) for k in differing)


@pytest.mark.skipif(not dist.is_available() or "fork" not in mp.get_all_start_methods(),
                    reason="needs torch.distributed and the fork start method")
def test_ddp_ranks_identical_with_lora_adapters_and_the_base_frozen(tmp_path):
    """LoRA (PEFT) under DistributedAdapted: the adapters and the head are all-reduced (ranks
    identical), the base weights and BatchNorm statistics are bit-identical to the start. Forked:
    the processes inherit this one's import of PEFT (seconds, as it imports transformers)."""
    pytest.importorskip("peft")
    from thawkit.plugins.adapters import is_adapter_param

    assert _run(tmp_path, True, ("lora", {"rank": 2, "num_classes": 4}), start_method="fork") == []
    a, b = (torch.load(tmp_path / f"state{r}.pt", weights_only=True) for r in (0, 1))
    initial, final = a["initial"], a["final"]
    assert [k for k in final if not torch.equal(final[k], b["final"][k])] == []  # buffers too
    adapters = [k for k in final if is_adapter_param(k)]
    assert {k.split(".lora_")[0] for k in adapters} == {"block1.0", "block2.0"}
    assert all(not torch.equal(initial[k], final[k]) for k in adapters + ["fc.weight"])
    base = [k for k in final if not is_adapter_param(k) and not k.startswith("fc.")]
    assert "stem.1.running_mean" in base and "block1.0.base_layer.weight" in base
    assert [k for k in base if not torch.equal(initial[k], final[k])] == []
