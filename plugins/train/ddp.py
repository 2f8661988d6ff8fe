"""``thawkit train`` in several processes: ``torchrun --nproc_per_node=N -m thawkit train RECIPE``
(or ``thawkit train --nproc N RECIPE``, which starts torchrun itself).

* One process per device, with ``DistributedDataParallel``: gloo on CPU, nccl on CUDA (each
  process on ``cuda:LOCAL_RANK``). Gradual phases re-wrap the model when a block thaws
  (:class:`~thawkit.plugins.distributed.DistributedAdapted`), so thawed blocks are all-reduced.
* ``data.batch_size`` is the *global* batch: every step, the processes together train on the
  batch a one-process run takes at that step (:class:`ShardedBatches`: the interleaving of
  ``torch.utils.data.DistributedSampler``, ``set_epoch`` included, over the same seeded order),
  each process's loss weighted by its share, so the gradient is the one-process gradient. The
  same recipe is the same training whatever the number of processes; the result differs only
  in floating-point rounding (the all-reduce sums the processes' gradients in its own order)
  and in per-process random streams (dropout), and BatchNorm layers that train normalise each
  process's part of the batch unless ``train.sync_bn`` is on.
* Validation: each process evaluates every ``size``-th image (no padding, so no image counts
  twice) and the sums (loss, correct, count) are all-reduced.
* Rank 0 alone writes the run directory; the others only read.
* The feature cache (``train.cache``) is off: each process would compute and hold the
  features of the whole set for its shard.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from thawkit import ConfigError
from thawkit.plugins.distributed import DistributedAdapted

from .cache import CachedPipeline
from .data import EpochBatches, Loaders

if TYPE_CHECKING:
    from .session import Session


@dataclass
class World:
    """This process's place among the run's processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def _device(self):
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" \
            else torch.device("cpu")

    def sum(self, values: list[float]) -> list[float]:
        """Sums over the processes (float64), the same on every process."""
        if not self.distributed:
            return values

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return bool(self.sum([float(flag)])[0]) if self.distributed else flag

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order (on every process)."""
        if not self.distributed:
            return [obj]

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def launched() -> bool:
    """Whether torchrun (or another launcher setting ``WORLD_SIZE``) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device_setting: str) -> World:
    """Join the process group torchrun describes in the environment (one process: no group).

    The backend follows ``train.device``: nccl for CUDA (each process takes ``cuda:LOCAL_RANK``,
    so the device must be ``auto`` or ``cuda``), gloo for CPU.
    """
    if dist.is_available() and dist.is_initialized():  # a caller's own group
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                     dist.get_backend())
    if not launched():
        return World()
    if not dist.is_available():
        raise ConfigError("torch was built without torch.distributed; run thawkit train in one "
                          "process")
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = device_setting in ("auto", "cuda") and torch.cuda.is_available()
    if device_setting.startswith("cuda:"):
        raise ConfigError(f"train.device is {device_setting!r}, but under torchrun every process "
                          "takes its own GPU (cuda:LOCAL_RANK); set train.device: cuda or auto")
    if device_setting == "mps":
        raise ConfigError("train.device: mps cannot run several processes; use cpu or cuda")
    if cuda:
        if local >= torch.cuda.device_count():
            raise ConfigError(f"process {local} of this machine has no GPU of its own "
                              f"({torch.cuda.device_count()} CUDA devices); start at most that "
                              "many processes per machine")
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend)
    # kept for the process's later runs (a group cannot be started twice from torchrun's
    # environment) and ended when the process exits
    atexit.register(lambda: dist.destroy_process_group() if dist.is_initialized() else None)
    return World(dist.get_rank(), dist.get_world_size(), local, backend)


def process_device(world: World, device: torch.device) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for a CUDA run under torchrun."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


class ShardedBatches(EpochBatches):
    """This process's part of every global batch of :class:`~.data.EpochBatches`.

    Global batch ``k`` is the one-process run's batch ``k`` (same seeded order, same size);
    process ``r`` of ``size`` takes its ``r``-th, ``r + size``-th, ... samples, the
    interleaving of ``DistributedSampler``. A final batch smaller than ``size`` is dropped
    (a process would get no sample).
    """
    def __init__(self, n: int, batch_size: int, seed: int, rank: int, size: int):
        super().__init__(n, batch_size, seed)
        self.rank, self.size = rank, size

    @property
    def steps_per_epoch(self) -> int:
        steps = super().steps_per_epoch
        last = self.n - (steps - 1) * self.batch_size
        return steps - 1 if steps > 1 and last < self.size else steps

    def __iter__(self):
        for keys in super().__iter__():
            yield keys[self.rank::self.size]


def check_batch(batch_size: int, processes: int) -> None:
    if batch_size < processes:
        raise ConfigError(f"data.batch_size is the global batch ({batch_size}), smaller than the "
                          f"{processes} processes: each needs at least one image per step; raise "
                          "data.batch_size or start fewer processes")


def shard(loaders: Loaders, world: World, *, batch_size: int, seed: int) -> Loaders:
    """Loaders that give this process its part of every training batch and of the validation set."""
    check_batch(batch_size, world.size)
    train, val = loaders.train, loaders.val
    common = {"num_workers": train.num_workers, "pin_memory": train.pin_memory,
              "worker_init_fn": train.worker_init_fn, "persistent_workers": False}
    batches = ShardedBatches(loaders.batches.n, batch_size, seed, world.rank, world.size)
    sharded_train = DataLoader(train.dataset, batch_sampler=batches, generator=train.generator,
                               collate_fn=train.collate_fn, **common)
    indices = range(world.rank, len(val.dataset), world.size)  # every image once, no padding
    sharded_val = DataLoader(val.dataset, batch_size=val.batch_size, sampler=indices,
                             generator=val.generator, collate_fn=val.collate_fn, **common)
    return Loaders(sharded_train, sharded_val, batches, loaders.classes)


def convert_sync_bn(model: torch.nn.Module) -> int:
    """Turn every ``BatchNorm1d/2d/3d`` into ``SyncBatchNorm`` in place; the number converted.

    In place (the module objects stay, only their class changes) so that the adapted
    model's norm policy, its hooks and the optimizer keep their references. A BatchNorm in a
    frozen block is in inference mode, where ``SyncBatchNorm`` uses its running statistics and
    never communicates; it synchronises once its block thaws (or with ``norm: train``).
    """
    count = 0
    for module in model.modules():
        if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            module.__class__ = nn.SyncBatchNorm
            module.process_group = None
            count += 1
    return count


def check_sync_bn(world: World, device: torch.device) -> None:
    if world.distributed and device.type != "cuda":
        raise ConfigError(f"train.sync_bn: torch's SyncBatchNorm runs on CUDA only, and this run "
                          f"is on {device.type}; set train.sync_bn: false (each process then "
                          "normalises its own part of the batch)")


def restore_message(saved: int, world: World) -> str | None:
    """What resuming with another number of processes means, or None when it is the same."""
    if saved == world.size:
        return None
    return (f"the checkpoint was written by {saved} process{'es' if saved > 1 else ''}, this run "
            f"has {world.size}: every step still trains on the same global batch "
            "(data.batch_size), but the result is not bit-identical to an uninterrupted run: "
            "gradients are summed across processes in another order, per-process random streams "
            "(dropout, drop-path) differ, and BatchNorm layers that train without train.sync_bn "
            "see other parts of each batch")


class DDPPipeline(CachedPipeline):
    """The training pipeline under DDP: training forwards go through the DDP wrap (re-wrapped
    when a phase changes the trainable set), evaluation runs the plain model. The cache
    decisions are all off here (see :func:`~.cache.decide`); they are only announced."""

    def __init__(self, session: Session, log: Callable[[str], None] = print):
        super().__init__(session, log)
        kwargs = {"device_ids": [session.device.index]} if session.device.type == "cuda" else {}
        if getattr(session.reader, "skips_parameters", False):
            kwargs["find_unused_parameters"] = True
        self.ddp = DistributedAdapted(session.adapted, **kwargs)

    def phase_changed(self, adapted: Any) -> None:
        super().phase_changed(adapted)
        self.ddp.refresh()

    def forward(self, x):
        return self.reader.forward(self.ddp.module, x) if self.model.training else super().forward(x)


def launch(args: Any, batch_size: int | None = None) -> int:
    """``thawkit train --nproc N ...``: the same command under ``torchrun --standalone``; its exit
    code. The processes inherit the environment (``THAWKIT_PLUGINS`` included)."""
    if launched():
        raise ConfigError("--nproc: this process is already one of several (started by torchrun); "
                          "leave --nproc out under torchrun")
    if batch_size is not None:
        check_batch(batch_size, args.nproc)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.nproc}", "-m", "thawkit"]
    command += [a for ref in (getattr(args, "plugin", None) or []) for a in ("--plugin", ref)]
    command += ["--debug"] if getattr(args, "debug", False) else []
    command += ["train"] + ([args.recipe] if args.recipe else [])
    for flag, value in (("--output", args.output), ("--epochs", args.epochs),
                        ("--stop-after", args.stop_after), ("--resume", args.resume)):
        if value is not None:
            command += [flag, str(value)]
    command += [a for kv in args.set or [] for a in ("--set", kv)]
    return subprocess.call(command)
