"""``thawkit train``'s feature cache: when it is on, and the pipeline that trains on it.

With ``train.cache: auto`` (the default) each phase of the strategy is decided on
its own, before training, in this order; the first rule that says off wins:

1. ``train.cache: off``: off.
2. ``data.augment: true``: off. Random crops and flips change the frozen part's
   input at every epoch, so its output cannot be reused. Augmentation matters most
   for full fine-tuning and little for linear probes: set ``data.augment: false``
   to cache (caching K augmented views would only approximate the uncached run,
   so thawkit does not do it).
3. The phase lasts fewer than 2 epochs: off. Every image passes through the
   frozen part once per epoch anyway; building the cache costs that same pass.
4. No exact split: off, with the reason from :func:`thawkit.plugins.split.frozen_prefix`
   (a block that trains below the boundary, ``norm: affine`` or ``train``, active
   dropout or drop-path in the frozen part (the strategy's ``frozen_dropout: off`` turns
   it off in frozen blocks), a model no plugin can split).
5. The frozen part does less than :data:`MIN_SHARE` (a quarter) of the forward
   pass's FLOPs (counted once, on one sample, with ``torch.utils.flop_counter``):
   off, too little is frozen to pay for the memory. This is what ends caching
   when a gradual run has thawed down to the cheap early blocks.
6. Memory: the features of the training set, then of the validation set, stay in
   RAM while they fit in ``train.cache_memory`` (default: a quarter of the memory
   available when the run starts); what does not fit goes to a memory-mapped file
   in ``<run>/cache/``, deleted when the phase ends. When the disk lacks that
   space too: off, naming the size needed.

When a gradual phase thaws a block below the boundary, the cache is dropped and,
if the new phase is on, rebuilt at the new boundary. Batches are the uncached
run's (same seed, same order, same sizes), drawn by index from the cache, so a
cached run equals the uncached one within float tolerance, and a resumed cached
run (the cache is rebuilt on resume) is bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from thawkit import data_config
from thawkit.plugins.split import frozen_prefix

from .data import FolderDataset, Preprocess, scan_folder
from .readers import reader_for
from .features import FeatureCache, format_bytes
from .pipeline import Pipeline

if TYPE_CHECKING:
    from thawkit import Adapted, Recipe, Split

    from .session import Session

#: the least share of the forward FLOPs the frozen part must do for a cache to pay
MIN_SHARE = 0.25
#: epochs a phase must last for a cache to pay
MIN_EPOCHS = 2
#: the share of available memory ``train.cache_memory: auto`` allows
AUTO_SHARE = 0.25


@dataclass
class CacheDecision:
    """Whether phase ``phase`` (epochs ``first``..``end - 1``) trains on cached features, and why."""

    phase: int
    first: int
    end: int
    on: bool
    reason: str
    block: str | None = None
    shape: tuple[int, ...] | None = None
    share: float | None = None
    train_bytes: int | None = None
    val_bytes: int | None = None
    in_ram: tuple[bool, bool] | None = None  # (train, val)
    split: Split | None = field(default=None, repr=False, compare=False)

    @property
    def epochs(self) -> str:
        return f"epoch {self.first + 1}" if self.end - self.first == 1 else \
            f"epochs {self.first + 1}-{self.end}"

    def text(self) -> str:
        if not self.on:
            return f"cache off for {self.epochs}: {self.reason}"
        size = ""
        if self.train_bytes is not None and self.val_bytes is not None and self.in_ram is not None:
            places = {"RAM" if r else "a memory-mapped file" for r in self.in_ram}
            size = f", {format_bytes(self.train_bytes + self.val_bytes)} in {' and '.join(sorted(places))}"
        elif self.shape is not None:
            size = ", size unknown until the data folders exist"
        return (f"cache on for {self.epochs}: features below {self.block!r} "
                f"({math.prod(self.shape or ()):,} values per image, {100 * (self.share or 0):.0f}% of the "
                f"forward FLOPs{size})")

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "epochs": [self.first + 1, self.end], "on": self.on,  # from 1, inclusive
                "reason": self.reason, "block": self.block,
                "shape": list(self.shape) if self.shape else None, "flops_share": self.share,
                "train_bytes": self.train_bytes, "val_bytes": self.val_bytes,
                "in_ram": list(self.in_ram) if self.in_ram else None, "text": self.text()}


def summary_lines(decisions: list[CacheDecision]) -> list[str]:
    """One line per phase, consecutive phases that are off for the same reason merged."""
    lines: list[str] = []
    merged: CacheDecision | None = None
    for d in decisions:
        if merged is not None and not d.on and not merged.on and d.reason == merged.reason \
                and d.first == merged.end:
            merged.end = d.end
            continue
        if merged is not None:
            lines.append(merged.text())
        merged = CacheDecision(d.phase, d.first, d.end, d.on, d.reason, d.block, d.shape, d.share,
                               d.train_bytes, d.val_bytes, d.in_ram)
    if merged is not None:
        lines.append(merged.text())
    return lines


def memory_budget(setting: int | str) -> int:
    """Bytes of RAM for cached features: the setting, or for ``auto`` a quarter of what is available."""
    if setting != "auto":
        return int(setting)
    return int(AUTO_SHARE * available_memory())


def available_memory() -> int:
    """Memory available now (Linux ``MemAvailable``), else free pages, else 4 GB."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * 10**9


def _free_disk(path: Path) -> int:
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def flops_share(split: Split, model: torch.nn.Module, input_shape: tuple[int, ...],
                device: Any) -> tuple[float, tuple[int, ...]]:
    """The prefix's share of the forward FLOPs on one sample, and its output shape (meta works)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        x = torch.zeros((1, *input_shape), device=device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = split.prefix(x)
        prefix = counter.get_total_flops()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            split.rest(out)
        rest = counter.get_total_flops()
    finally:
        for module, training in modes:
            module.training = training
    total = prefix + rest
    return (prefix / total if total else 0.0), tuple(out.shape[1:])


def decide(adapted: Adapted, recipe: Recipe, prep: Preprocess, *, n_train: int | None,
           n_val: int | None, run_dir: Path, device: Any, processes: int = 1) -> list[CacheDecision]:
    """The decision for every phase the run reaches, by the rules in the module docstring (off in
    a run of several processes: each would compute and hold every image's features)."""
    epochs = recipe.train.epochs
    budget = memory_budget(recipe.train.cache_memory) if recipe.train.cache != "off" else 0
    reader_off = reader_for(recipe).cache_off
    out = []
    for i, ph in enumerate(adapted.phases):
        end = min(adapted.phases[i + 1].epoch if i + 1 < len(adapted.phases) else epochs, epochs)
        if ph.epoch < end:
            d = CacheDecision(i, ph.epoch, end, False, "")
            if reader_off is not None:
                d.reason = f"data.reader {recipe.data.reader}: {reader_off}"
            elif processes > 1:
                d.reason = (f"{processes} processes (torchrun): each would compute and hold the "
                            "features of every image for its share of the batches")
            else:
                _decide_phase(d, adapted, recipe, prep, (n_train, n_val), budget, run_dir, device)
            out.append(d)
    return out


def _decide_phase(d: CacheDecision, adapted: Adapted, recipe: Recipe, prep: Preprocess,
                  counts: tuple[int | None, int | None], budget: int, run_dir: Path,
                  device: Any) -> None:
    t = recipe.train
    if t.cache == "off":
        d.reason = "train.cache is off"
        return
    if prep.augment:
        d.reason = ("data.augment is true: random crops and flips change the frozen part's input "
                    "every epoch; set data.augment: false to cache")
        return
    if d.end - d.first < MIN_EPOCHS:
        d.reason = "a phase of 1 epoch passes each image through the frozen part once anyway"
        return
    frozen = frozen_prefix(adapted, d.phase)
    d.block = frozen.block
    if not frozen:
        d.reason = frozen.reason
        return
    d.share, d.shape = flops_share(frozen.split, adapted.model, (3, prep.image_size, prep.image_size),
                                   device)
    if d.share < MIN_SHARE:
        d.reason = (f"the frozen part below {frozen.block!r} does {100 * d.share:.0f}% of the forward "
                    f"FLOPs, under {100 * MIN_SHARE:.0f}%: too little to pay")
        return
    n_train, n_val = counts
    if n_train is not None and n_val is not None:
        per = math.prod(d.shape) * (4 if t.cache_dtype == "float32" else 2)
        d.train_bytes, d.val_bytes = n_train * per, n_val * per
        train_ram = d.train_bytes <= budget
        val_ram = d.val_bytes <= budget - (d.train_bytes if train_ram else 0)
        d.in_ram = (train_ram, val_ram)
        on_disk = (0 if train_ram else d.train_bytes) + (0 if val_ram else d.val_bytes)
        if on_disk and on_disk > _free_disk(run_dir):
            d.reason = (f"the features need {format_bytes(d.train_bytes + d.val_bytes)}: more than "
                        f"train.cache_memory allows in RAM ({format_bytes(budget)}), and the disk of "
                        f"{run_dir} has less than the {format_bytes(on_disk)} free for the rest; "
                        "raise train.cache_memory, free disk space, or set train.cache_dtype: "
                        "float16 (half the size)")
            return
    d.on, d.reason, d.split = True, frozen.reason, frozen.split


class CachedPipeline(Pipeline):
    """The training pipeline with the feature cache: in phases where the session's decision is on,
    batches are cached features of the frozen prefix and ``forward`` runs only the rest."""

    def __init__(self, session: Session, log: Callable[[str], None] = print):
        super().__init__(session)
        self.session = session
        self.log = log
        self.decisions = {d.phase: d for d in session.cache}
        self.announced: set[int] = set()
        self.current: CacheDecision | None = None
        self.train_cache: FeatureCache | None = None
        self.val_cache: FeatureCache | None = None

    def status(self, phase: int) -> str | None:
        """The decision for ``phase`` as one line (and remembered as said); the phases after it
        that are off for the same reason join that line, so a reason is said once, not per phase."""
        d = self.decisions.get(phase)
        if d is None:
            return None
        same = [d]
        while not d.on and (after := self.decisions.get(same[-1].phase + 1)) is not None \
                and not after.on and after.reason == d.reason:
            same.append(after)
        self.announced.update(x.phase for x in same)
        return summary_lines(same)[0]

    def phase_changed(self, adapted: Adapted) -> None:
        self.close()
        if adapted.phase not in self.announced:
            line = self.status(adapted.phase)
            if line:
                self.log(line)
        d = self.decisions.get(adapted.phase)
        if d is not None and d.on:
            self.build(d)

    def build(self, d: CacheDecision) -> None:
        """Compute the train and validation features of ``d.split``'s prefix (``d`` must be on)."""
        s = self.session
        t, data = s.recipe.train, s.recipe.data
        budget = memory_budget(t.cache_memory)
        directory = s.files.cache

        def autocast():
            return torch.autocast(s.device.type, dtype=s.amp_dtype or torch.float32,
                                  enabled=s.amp_dtype is not None)

        def cache(loader: Any, name: str, memory: int) -> FeatureCache:
            dataset = FolderDataset(loader.dataset.samples, s.prep.eval_transform())
            source = DataLoader(dataset, batch_size=data.batch_size, shuffle=False,
                                num_workers=data.num_workers, generator=torch.Generator())
            return FeatureCache(d.split.prefix, source, size=len(dataset), device=s.device,
                                dtype=t.cache_dtype, memory=memory, directory=directory,
                                autocast=autocast, name=name)

        self.train_cache = cache(self.loaders.train, "train", budget)
        used = self.train_cache.nbytes if self.train_cache.path is None else 0
        self.val_cache = cache(self.loaders.val, "val", max(budget - used, 0))
        self.current = d

    def train_batches(self, epoch: int, skip: int) -> Iterator:
        if self.train_cache is None:
            return super().train_batches(epoch, skip)
        batches = self.loaders.batches
        batches.set_epoch(epoch, skip)
        return self.train_cache.batches(([i for _, i in keys] for keys in batches), self.device)

    def val_batches(self) -> Iterator:
        if self.val_cache is None:
            return super().val_batches()
        n, size = len(self.val_cache), self.loaders.val.batch_size
        return self.val_cache.batches((range(i, min(i + size, n)) for i in range(0, n, size)),
                                      self.device)

    def forward(self, x):
        if self.current is None:
            return super().forward(x)
        return self.current.split.rest(x)

    def close(self) -> None:
        for cache in (self.train_cache, self.val_cache):
            if cache is not None:
                cache.close()
        self.train_cache = self.val_cache = self.current = None
        directory = self.session.files.cache
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def plan_decisions(recipe: Recipe, adapted: Adapted) -> list[CacheDecision]:
    """``thawkit plan``'s view of the cache: one decision per phase, sizes when the data exists."""
    if reader_for(recipe).cache_off is not None:  # off whatever the data: nothing to measure
        return decide(adapted, recipe, None, n_train=None, n_val=None,
                      run_dir=Path(recipe.train.output), device=None)
    prep = Preprocess.resolve(data_config(adapted.model, pm=recipe.plugin_manager), recipe.data)
    counts = []
    for folder, name in ((recipe.data.train, "data.train"), (recipe.data.val, "data.val")):
        try:
            counts.append(len(scan_folder(folder, name, check_headers=False)) if folder else None)
        except Exception:  # noqa: BLE001 - the plan shows the cache without sizes
            counts.append(None)
    device = next(adapted.model.parameters()).device
    return decide(adapted, recipe, prep, n_train=counts[0], n_val=counts[1],
                  run_dir=Path(recipe.train.output), device=device)
