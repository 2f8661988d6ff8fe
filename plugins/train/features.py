""":class:`FeatureCache`: a frozen prefix's outputs for a whole dataset, computed once.

For your own training loop, with :func:`thawkit.plugins.split.frozen_prefix` (``thawkit train``
uses the same class)::

    from torch.utils.data import BatchSampler, DataLoader, RandomSampler
    from thawkit.plugins.split import frozen_prefix
    from thawkit.plugins.train.features import FeatureCache

    frozen = frozen_prefix(adapted)
    if not frozen:
        raise SystemExit(f"no cache: {frozen.reason}")
    # one pass over the data, in dataset order, with a deterministic transform
    features = FeatureCache(frozen.split.prefix, DataLoader(train_set, batch_size=256))
    # the batches your uncached loop would draw: same sampler, same generator seed
    sampler = BatchSampler(RandomSampler(train_set, generator=torch.Generator().manual_seed(0)),
                           batch_size=64, drop_last=False)
    for epoch in range(10):
        adapted.model.train()
        for x, y in features.batches(sampler):
            loss = F.cross_entropy(frozen.split.rest(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()

Build a new cache when the phase (and so ``frozen_prefix()``) changes. The data
must come in dataset order (a ``DataLoader`` with ``shuffle=False``): features are
stored by index. Features stay in RAM up to ``memory`` bytes; beyond, they go to
a memory-mapped file in ``directory``. ``dtype=torch.float16`` halves the size
(no longer bit-exact: measure it on your task). ``features.save(folder)`` writes them
to numpy files that ``FeatureCache.open(folder)`` memory-maps read-only, in any
process (``thawkit search`` shares one set between its worker processes this way).
"""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch and numpy are imported inside the functions that use them: importing FeatureCache is cheap.

#: storage dtypes by name (a memory-mapped file needs one numpy knows)
DTYPES = ("float32", "float16")


class FeatureStore:
    """``n`` feature tensors of one shape: a tensor in RAM, or a memory-mapped file at ``path``."""

    def __init__(self, n: int, shape: Sequence[int], dtype: str, path: Path | None = None):
        import numpy as np
        import torch

        self.n, self.shape, self.dtype, self.path = n, tuple(shape), dtype, path
        self.kept = False  # a file of :meth:`open`, left in place by :meth:`close`
        if path is None:
            self.data: Any = torch.empty((n, *self.shape), dtype=getattr(torch, dtype))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.data = np.memmap(path, dtype=getattr(np, dtype), mode="w+", shape=(n, *self.shape))

    @classmethod
    def open(cls, path: Path) -> FeatureStore:
        """A ``.npy`` file written by :meth:`save`, memory-mapped read-only (processes that open
        the same file share one copy in the page cache); :meth:`close` leaves the file."""
        import numpy as np

        data = np.load(path, mmap_mode="r")  # a truncated file fails here
        if data.dtype.name not in DTYPES or data.ndim < 1:
            raise ValueError(f"{path}: {data.dtype.name} array of {data.ndim} dimensions, not features")
        store = cls.__new__(cls)
        store.n, store.shape, store.dtype, store.path = data.shape[0], tuple(data.shape[1:]), \
            data.dtype.name, Path(path)
        store.data, store.kept = data, True
        return store

    def save(self, path: Path) -> None:
        """Write the features to ``path`` in numpy's ``.npy`` format, flushed to the disk."""
        _save_array(path, self.data if self.path is not None else self.data.numpy())

    @property
    def nbytes(self) -> int:
        return self.n * math.prod(self.shape) * (4 if self.dtype == "float32" else 2)

    def write(self, start: int, values: torch.Tensor) -> None:
        import torch

        values = values.detach().to("cpu", getattr(torch, self.dtype))
        if self.dtype == "float16" and not bool(values.isfinite().all()):
            raise ConfigError("train.cache_dtype: the frozen features exceed float16's range; use "
                              "float32")
        end = start + values.shape[0]
        if self.path is None:
            self.data[start:end] = values
        else:
            self.data[start:end] = values.numpy()

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        """The features at ``indices``, as float32 (a copy)."""
        import numpy as np
        import torch

        if self.path is None:
            return self.data[torch.as_tensor(indices, dtype=torch.long)].float()
        return torch.from_numpy(self.data[np.asarray(indices, dtype=np.int64)]).float()

    def close(self) -> None:
        if self.path is not None:
            del self.data
            if not self.kept:
                self.path.unlink(missing_ok=True)
            self.path = None


class FeatureCache:
    """The outputs of ``prefix`` for every sample of ``data``, in dataset order, and their labels.

    Parameters:
        prefix: the frozen prefix, ``frozen_prefix(adapted).split.prefix``; it runs in eval
            mode under ``torch.no_grad()`` (the modes of its modules are put back after, and the
            global CPU RNG is left as it was, so the training's random draws are unchanged).
        data: ``(inputs, labels)`` batches in dataset order (``DataLoader(..., shuffle=False)``).
        size: number of samples (default ``len(data.dataset)``; without either, the features
            are gathered in RAM).
        device: where ``prefix`` runs (default: where its parameters are).
        dtype: storage, ``"float32"`` (exact) or ``"float16"``; batches come back as float32.
        memory: bytes of RAM the features may take (default: no limit); beyond, they go to a
            memory-mapped file in ``directory``.
        directory: folder for that file (deleted by :meth:`close`).
        autocast: a context manager factory the prefix runs under (the training's mixed precision).
    """

    def __init__(self, prefix: nn.Module, data: Iterable, *, size: int | None = None,
                 device: Any = None, dtype: str = "float32", memory: int | None = None,
                 directory: str | os.PathLike | None = None, autocast: Any = None, name: str = "features"):
        if dtype not in DTYPES:
            raise ConfigError(f"FeatureCache dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        _check_order(data)
        if size is None and hasattr(data, "dataset"):
            size = len(data.dataset)
        self.store: FeatureStore | None = None
        self.labels: torch.Tensor | None = None
        self._build(prefix, data, size, device, dtype, memory, directory, autocast, name)

    def _build(self, prefix, data, size, device, dtype, memory, directory, autocast, name) -> None:
        import torch

        if device is None:
            first = next(prefix.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
        modes = [(m, m.training) for m in prefix.modules()]
        prefix.eval()
        labels: list[torch.Tensor] = []
        gathered: list[torch.Tensor] = []
        start = 0
        try:
            # iterating a DataLoader draws its base seed from the global RNG: the build must leave
            # the RNG as it found it, or the run's dropout masks would differ from the uncached run's
            with torch.random.fork_rng(devices=[]), torch.no_grad(), \
                    (autocast() if autocast is not None else nullcontext()):
                for x, y in data:
                    out = prefix(x.to(device))
                    if size is None:
                        gathered.append(out.detach().to("cpu", getattr(torch, dtype)))
                    else:
                        if self.store is None:
                            self.store = self._allocate(size, out.shape[1:], dtype, memory, directory,
                                                        name)
                        self.store.write(start, out)
                    labels.append(torch.as_tensor(y).reshape(-1).to("cpu"))
                    start += out.shape[0]
        except BaseException:
            self.close()
            raise
        finally:
            for module, training in modes:
                module.training = training
        if size is None:
            if not gathered:
                raise ConfigError("FeatureCache: the data yielded no batches")
            stacked = torch.cat(gathered)
            self.store = FeatureStore(stacked.shape[0], stacked.shape[1:], dtype)
            self.store.write(0, stacked)
        elif start != size:
            self.close()
            raise ConfigError(f"FeatureCache: the data yielded {start} samples, expected {size}")
        self.labels = torch.cat(labels)

    @staticmethod
    def _allocate(n: int, shape, dtype: str, memory: int | None, directory, name: str) -> FeatureStore:
        bytes_needed = n * math.prod(shape) * (4 if dtype == "float32" else 2)
        if memory is None or bytes_needed <= memory:
            return FeatureStore(n, shape, dtype)
        if directory is None:
            raise ConfigError(f"FeatureCache: the features need {format_bytes(bytes_needed)}, more "
                              f"than the {format_bytes(memory)} of RAM allowed; pass directory= for "
                              "a memory-mapped file")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{name}-", suffix=".bin")
        os.close(fd)
        return FeatureStore(n, shape, dtype, Path(tmp))

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return 0 if self.store is None else self.store.n

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample's features."""
        return () if self.store is None else self.store.shape

    @property
    def nbytes(self) -> int:
        return 0 if self.store is None else self.store.nbytes

    @property
    def path(self) -> Path | None:
        """The memory-mapped file, or ``None`` when the features are in RAM."""
        return None if self.store is None else self.store.path

    def take(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (float32) and labels of the samples at ``indices``."""
        import torch

        assert self.store is not None and self.labels is not None, "the cache is closed"
        return self.store.take(indices), self.labels[torch.as_tensor(indices, dtype=torch.long)]

    def batches(self, index_batches: Iterable[Sequence[int]], device: Any = None) -> Iterator:
        """``(features, labels)`` for each list of indices (a ``BatchSampler``, for instance)."""
        for indices in index_batches:
            x, y = self.take(list(indices))
            yield (x, y) if device is None else (x.to(device), y.to(device))

    def save(self, folder: str | os.PathLike, name: str = "features") -> None:
        """Write the features and labels to ``folder/NAME.npy`` and ``folder/NAME-labels.npy``
        (numpy's format: shape and dtype in the header), for :meth:`open` in any process."""
        assert self.store is not None and self.labels is not None, "the cache is closed"
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.store.save(folder / f"{name}.npy")
        _save_array(folder / f"{name}-labels.npy", self.labels.numpy())

    @classmethod
    def open(cls, folder: str | os.PathLike, name: str = "features") -> FeatureCache:
        """Features written by :meth:`save`, memory-mapped read-only: processes that open the
        same folder share one copy in the operating system's page cache. :meth:`close` leaves
        the files; a missing, truncated or inconsistent file raises ``OSError`` or ``ValueError``."""
        import numpy as np
        import torch

        folder = Path(folder)
        cache = cls.__new__(cls)
        cache.store = FeatureStore.open(folder / f"{name}.npy")
        cache.labels = torch.from_numpy(np.load(folder / f"{name}-labels.npy"))
        if cache.labels.shape != (cache.store.n,):
            raise ValueError(f"{folder}: {tuple(cache.labels.shape)} labels for {cache.store.n} "
                             "features")
        return cache

    def close(self) -> None:
        """Free the features (and delete a memory-mapped file this cache created)."""
        if self.store is not None:
            self.store.close()
        self.store = None
        self.labels = None


def _save_array(path: Path, array: Any) -> None:
    import numpy as np

    with open(path, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())


def _check_order(data: Iterable) -> None:
    from torch.utils.data import RandomSampler

    sampler = getattr(data, "sampler", None)
    batch_sampler = getattr(data, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    if isinstance(sampler, RandomSampler) or isinstance(inner, RandomSampler):
        raise ConfigError("FeatureCache stores features by dataset index: build it from a loader "
                          "with shuffle=False, and shuffle the cached batches instead")


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
