"""Crash-safe files of a run: atomic writes, the resume checkpoint, weights and metrics.

Every file is written to a temporary file in the same directory, flushed,
fsynced and renamed over the old one (then the directory is fsynced), so a
crash or Ctrl-C during a save leaves either the old file or the new one, never
a torn one. Checkpoints load with ``weights_only=True``: a checkpoint cannot
carry code.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from thawkit import ThawkitError

from .rundir import RunDir, RunDirError, disk_errors, os_cause

if TYPE_CHECKING:
    import torch

# torch, numpy and safetensors are imported inside the functions that use them: this module is
# imported torch-free by the run-directory readers (plot, run_model, inference).

CHECKPOINT_FORMAT = 1


class CheckpointError(ThawkitError):
    """A run directory without a usable checkpoint."""


# ------------------------------------------------------------------ atomic
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success fsync and rename it to ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed and
    ``path`` is untouched; an ``OSError`` (full disk, read-only file system) becomes a
    :class:`~thawkit.plugins.train.rundir.RunDirError` naming ``path`` and the cause.
    """
    path = Path(path)
    with disk_errors("write", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make run files private
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, ThawkitError):
            raise RunDirError(exc.errno, f"cannot write {str(path)!r}: {os_cause(exc)}") from exc
        raise
    _fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, writer: Callable[[BinaryIO], Any]) -> None:
    with atomic_file(path) as fh:
        writer(fh)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda fh: fh.write(text.encode()))


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def save_weights(path: str | os.PathLike, state: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """A ``.safetensors`` file of ``state`` (contiguous CPU copies), written atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    blob = save(tensors, metadata=metadata)
    write_atomic(path, lambda fh: fh.write(blob))


# ----------------------------------------------------------------- metrics
def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with disk_errors("write", path), open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, up to the first torn or damaged line."""
    if not path.is_file():
        return []
    rows = []
    with disk_errors("read", path):
        text = path.read_bytes().decode("utf-8", "replace")
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # a torn last line from a crash mid-append
            break
        if not isinstance(row, dict):
            break
        rows.append(row)
    return rows


def truncate_metrics(path: Path, epochs_done: int) -> list[dict[str, Any]]:
    """Keep only the records of epochs before ``epochs_done`` (those the checkpoint covers)."""
    rows = [r for r in read_jsonl(path) if isinstance(r.get("epoch"), int) and r["epoch"] < epochs_done]
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


# --------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached), "kind": str(kind)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"],
                         n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# -------------------------------------------------------------- checkpoint
def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``run_dir/checkpoint.pt`` atomically; ``state`` holds only tensors and plain data."""
    import torch

    path = RunDir(run_dir).checkpoint
    state = {"format": CHECKPOINT_FORMAT, **state}
    write_atomic(path, lambda fh: torch.save(state, fh))
    return path


def load_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint of a run directory, or a :class:`CheckpointError` saying what is wrong."""
    import torch

    run_dir = Path(run_dir)
    path = RunDir(run_dir).checkpoint
    if not run_dir.is_dir():
        raise CheckpointError(f"--resume: run directory {str(run_dir)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"--resume: {str(run_dir)!r} has no {RunDir.CHECKPOINT} (and no "
                              f"{RunDir.RECIPE} to start again from): it is not a thawkit run "
                              "directory, or its run stopped before writing anything; start it "
                              f"with: thawkit train RECIPE --output {run_dir}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {first}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a thawkit checkpoint of format "
                              f"{CHECKPOINT_FORMAT}")
    return state
