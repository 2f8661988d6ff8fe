"""Weight files for sources: read a state dict safely and load it into a model strictly.

Used by the built-in sources (torchvision, timm, ``python:``) and the training
plugin; a third-party source can use it the same way::

    from thawkit.plugins.weights import apply_weights, read_weights

The builder options that published weights imply are public in ``thawkit``
(``thawkit.arch_options``); the old name here is a deprecated alias.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import thawkit
from thawkit import WeightsError, quote, shorten

if TYPE_CHECKING:
    import torch
    from torch import nn

__getattr__ = thawkit.moved_names(__name__, {"arch_options": "thawkit:arch_options"})


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a tensors-only torch file.

    Never unpickles code: torch files load with ``weights_only=True`` and a file
    that needs more is refused. ``{"state_dict": ...}`` / ``{"model": ...}``
    wrappers and ``module.`` / ``_orig_mod.`` prefixes are unwrapped.
    """
    import torch

    path = Path(path)
    problem = not_a_file(path)
    if problem:
        raise WeightsError(f"weights file {quote(str(path))} {problem}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        with _safetensors_errors(path):
            state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            lines = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines() or [type(exc).__name__]
            first = next((line.strip() for line in lines if "Unsupported global" in line), lines[0])
            kind = sniff(path)
            if kind:
                raise _corrupt(path, kind) from None
            if "weights_only" in str(exc) or "Unsupported global" in str(exc):
                raise WeightsError(
                    f"refusing to load {quote(str(path))}: it contains pickled code or objects, not "
                    f"only tensors ({shorten(first)}). Re-save it with torch.save(model.state_dict(), "
                    "path) or as .safetensors") from None
            raise _corrupt(path, shorten(first)) from None
        except Exception as exc:  # torch raises many types on garbage (IndexError, KeyError, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise _corrupt(path, sniff(path) or shorten(first)) from None
    return _unwrap(state, path)


def check_weights_header(path: str | os.PathLike) -> None:
    """The checks of :func:`read_weights` that need no tensor read: a regular file, a safetensors
    header that parses, or the first bytes of a torch file (a :class:`~thawkit.WeightsError`)."""
    path = Path(path)
    problem = not_a_file(path)
    if problem:
        raise WeightsError(f"weights file {quote(str(path))} {problem}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with _safetensors_errors(path), safe_open(str(path), "pt") as f:
            f.keys()
    else:
        kind = sniff(path)
        if kind:
            raise _corrupt(path, kind)


@contextmanager
def _safetensors_errors(path: Path) -> Iterator[None]:
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"weights file {quote(str(path))} is not a valid safetensors file: "
                           f"{shorten(str(exc))}") from None


def not_a_file(path: Path) -> str | None:
    """What ``path`` is when it is not a regular file ("does not exist", "is a directory", ...)."""
    import stat

    try:
        if path.is_file():
            return None
        if path.is_symlink() and not path.exists():
            return f"is a broken symbolic link (to {quote(os.readlink(path))})"
        if not path.exists():
            return "does not exist"
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
            if stat.S_ISSOCK(mode) else "not a regular file")
    link = f" (a symbolic link to {quote(os.readlink(path))})" if path.is_symlink() else ""
    return f"is {kind}{link}, not a weights file" if kind.startswith("a ") else f"is {kind}{link}"


def sniff(path: Path) -> str | None:
    """What a file that torch cannot load holds instead, from its first bytes (None: looks like a
    torch file, a zip archive or a pickle)."""
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if not head:
        return "the file is empty"
    if head.startswith(b"PK") or head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return None
    if len(head) > 8 and head[8:9] == b"{":
        return "it looks like a safetensors file; name it with the .safetensors suffix"
    return (f"it is neither a zip archive nor a pickle (starts with bytes {head[:8].hex(' ')}); "
            "save weights with torch.save(model.state_dict(), path) or as .safetensors")


def _corrupt(path: Path, first: str) -> WeightsError:
    return WeightsError(f"weights file {quote(str(path))} is corrupt or not a torch file: {first}")


def _unwrap(state: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    for key in ("state_dict", "model_state_dict", "model", "module", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


@dataclass
class WeightsReport:
    """What :func:`apply_weights` did: head keys dropped for another class count."""

    file: str
    dropped_head: list[str]
    message: str = ""


def apply_weights(model: nn.Module, state: dict[str, torch.Tensor], *, file: str,
                  head_prefixes: list[str]) -> WeightsReport:
    """Load ``state`` into ``model`` strictly, except for a head with another number of classes.

    Head keys (under ``head_prefixes``) whose shapes differ are dropped and the
    head keeps its fresh initialisation; the report says so. Any other missing,
    unexpected or mis-shaped key is a :class:`WeightsError` listing them.
    """
    import warnings

    own = model.state_dict()

    def in_head(k: str) -> bool:
        return any(k == p or k.startswith(p + ".") for p in head_prefixes)

    dropped = [k for k, v in state.items()
               if in_head(k) and k in own and tuple(v.shape) != tuple(own[k].shape)]
    n_file = tuple(state[dropped[0]].shape)[0] if dropped else None
    state = {k: v for k, v in state.items() if k not in dropped}
    missing = [k for k in own if k not in state and k not in dropped]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
             for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", shape)):
            if keys:
                more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
                parts.append(f"{title} ({len(keys)}): {', '.join(keys[:8])}{more}")
        raise WeightsError(f"weights file {file!r} does not fit {type(model).__name__}: "
                           + "; ".join(parts))
    model.load_state_dict(state, strict=False, assign=_on_meta(model))
    report = WeightsReport(file, dropped)
    if dropped:
        n_model = tuple(own[dropped[0]].shape)[0]
        report.message = (f"{file}: checkpoint head has {n_file} classes, the model {n_model}; "
                          f"head weights dropped ({', '.join(dropped)}), the head stays freshly initialised")
        warnings.warn(report.message, stacklevel=2)
    return report


def _on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())

