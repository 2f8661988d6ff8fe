"""Features shared by every trial of a search: computed once for the whole search on this
machine, by whichever process needs them first, and read by every other.

A trial whose frozen prefix can be cached asks :class:`SharedFeatures` for the features below
its boundary (``trial.SharedCachePipeline``). They are looked up by a key of everything that
changes them (``trial.feature_key``): the boundary block, a fingerprint of the prefix's weights
and structure, the data section, every train and hold-out file (path, label, size, modification
time), the preprocessing, the storage dtype, mixed precision, the device type and torch's
version. A trial's batches are those it would draw without sharing (same seed, same order), so
its result is the same within float tolerance. A process keeps the features it has opened for
its later trials; the first process to need a key computes it and writes it to
``DIR/features/<block>-<digest>/`` (``train.npy``, ``val.npy`` and their labels), and every
process (``--jobs N`` workers, and the main one that trains the batch of heads) memory-maps
that folder read-only, so the operating system keeps one copy in its page cache for all of them.

- One writer per key: the writer holds ``DIR/features/<key>.lock`` (``flock``) while it computes
  and writes; a process that needs the same key waits for it, then reads. The lock goes with
  the process, so a killed writer leaves it free.
- Never half an entry: the writer writes into a temporary folder, flushes every file to the
  disk, and renames the folder into place last. A folder left by a killed writer is deleted by
  the next process that takes the key's lock, and the features are computed again.
- Memory: the writer computes the features as the training plugin's cache does (in RAM while
  they fit ``train.cache_memory``, beyond that in a memory-mapped file of its run), writes them,
  and lets its copy go; from then on every process reads the shared files through the page
  cache, which the operating system fills and frees as memory allows. The disk must hold them
  with :data:`DISK_MARGIN` to spare.
- Where the features cannot be shared (no ``flock`` on the file system, a disk without room for
  them, a write that fails) each process keeps the features it computed, as ``thawkit train``
  would.
- The folder stays while the search is interrupted or killed, so the same command continues
  on the features already computed (their key says whether they still apply); it is deleted
  when the search finishes.
- Workers on other machines (``--storage postgresql://...``) each have their own output folder
  and compute their own features.

Each trial records what it did in its Optuna user attribute ``features`` (``built``,
``reused``, and the ``seconds`` it spent computing features); ``search.json``'s ``caches`` adds
them up over every trial, worker and session.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thawkit.plugins.train.features import FeatureCache

#: the folder of the search's output that holds the shared features
FEATURES_DIR = "features"
#: the trial user attribute that says how many features a trial computed and reused
TRIAL_ATTR = "features"
#: disk space the shared features leave free, beyond their own size
DISK_MARGIN = 256 * 2**20

Pair = tuple["FeatureCache", "FeatureCache"]


class SharedFeatures:
    """The frozen prefixes' features of one search, computed once per key for all its processes.

    ``directory``: where they are shared between processes (``DIR/features``); ``None``
    shares them within this process only. ``builds``, ``reuses`` and ``seconds`` count this
    process's computations, its reuses and the seconds it spent computing.
    """

    def __init__(self, directory: Path | None = None, log: Callable[[str], None] | None = None):
        self.directory = directory
        self.log = log
        self.entries: dict[str, Pair] = {}
        self.builds = 0
        self.reuses = 0
        self.seconds = 0.0
        self._said: set[str] = set()

    def counts(self) -> dict[str, float]:
        return {"built": self.builds, "reused": self.reuses, "seconds": self.seconds}

    def since(self, mark: dict[str, float]) -> dict[str, float]:
        """What this process built and reused, and the seconds it computed, since ``mark``
        (from :meth:`counts`)."""
        now = self.counts()
        return {"built": now["built"] - mark["built"], "reused": now["reused"] - mark["reused"],
                "seconds": round(now["seconds"] - mark["seconds"], 3)}

    def get(self, key: str, build: Callable[[], Pair]) -> Pair:
        """The train and hold-out features of ``key``: this process's, another process's (from
        the shared folder), or ``build()``'s, which are then shared."""
        entry = self.entries.get(key)
        if entry is not None:
            self.reuses += 1
            return entry
        entry = self._across_processes(key, build) if self.directory is not None else None
        if entry is None:
            entry = self._compute(build)
        self.entries[key] = entry
        return entry

    def _compute(self, build: Callable[[], Pair]) -> Pair:
        started = time.perf_counter()
        entry = build()
        self.builds += 1
        self.seconds += time.perf_counter() - started
        return entry

    def _across_processes(self, key: str, build: Callable[[], Pair]) -> Pair | None:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        folder = self.directory / key
        with _exclusive(self.directory / f"{key}.lock") as locked:
            if not locked:
                self._say("the file system of {dir} cannot lock files (flock): each process "
                          "computes its own features")
                return None
            entry = _open(folder)
            if entry is not None:
                self.reuses += 1
                return entry
            _remove_entry(self.directory, key)  # what a killed writer left, or a damaged entry
            train, val = self._compute(build)
            need = train.nbytes + val.nbytes
            free = shutil.disk_usage(self.directory).free
            if need + DISK_MARGIN > free:
                self._say(f"the disk of {{dir}} has {free / 1e9:.1f} GB free, too little to share "
                          f"features of {need / 1e9:.1f} GB: each process computes its own")
                return train, val
            tmp = self.directory / f".{key}.{os.getpid()}.tmp"
            try:
                train.save(tmp, "train")
                val.save(tmp, "val")
                (tmp / "key.json").write_text(json.dumps({"key": key, "pid": os.getpid()}))
                _fsync_dir(tmp)
                os.rename(tmp, folder)  # the entry appears whole, or not at all
                _fsync_dir(self.directory)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                self._say(f"the features cannot be written to {{dir}} ({exc}): each process "
                          "computes its own")
                return train, val
            train.close()
            val.close()
        entry = _open(folder)
        if entry is None:
            raise OSError(errno.EIO, f"{folder}: the features just written cannot be read back")
        return entry

    def _say(self, text: str) -> None:
        if text not in self._said and self.log is not None:
            self._said.add(text)
            self.log(text.format(dir=self.directory))

    def close(self) -> None:
        """Let go of the features this process holds (the shared files stay)."""
        for train, val in self.entries.values():
            train.close()
            val.close()
        self.entries.clear()

    def remove(self) -> None:
        """Close, and delete the shared folder (the search has finished)."""
        self.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def _open(folder: Path) -> Pair | None:
    """The entry in ``folder`` memory-mapped, or None when there is none or it cannot be read."""
    from thawkit.plugins.train.features import FeatureCache

    if not (folder / "key.json").is_file():
        return None
    try:
        train = FeatureCache.open(folder, "train")
        return train, FeatureCache.open(folder, "val")
    except (OSError, ValueError):
        return None


def _remove_entry(directory: Path, key: str) -> None:
    shutil.rmtree(directory / key, ignore_errors=True)
    for tmp in directory.glob(f".{key}.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    """Hold ``path`` locked (``flock``, waiting for another holder) for the block; yields False,
    holding nothing, where the platform or file system cannot lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield False
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock (some network mounts)
            yield False
            return
        yield True  # closing the descriptor, or the process ending, releases the lock
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cache_figures(study: Any) -> dict[str, float]:
    """``search.json``'s ``caches``: features built and reused, and the seconds spent computing
    them, added up over the trials of every process and session of the search."""
    out: dict[str, float] = {"built": 0, "reused": 0, "seconds": 0.0}
    for t in study.get_trials(deepcopy=False):
        for k, v in t.user_attrs.get(TRIAL_ATTR, {}).items():
            out[k] = out.get(k, 0) + v
    out["seconds"] = round(out["seconds"], 3)
    return out
