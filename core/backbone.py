"""Backbone specs, loading through source plugins, data configs and safe weight files."""
from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, WeightsError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .plugin_manager import ThawkitPluginManager

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


@dataclass(frozen=True)
class BackboneSpec:
    """Where a backbone comes from: ``source:name`` plus loader options."""

    source: str
    name: str
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def parse(cls, spec: str, options: dict[str, Any] | None = None) -> BackboneSpec:
        if not isinstance(spec, str) or ":" not in spec or spec.startswith(":") or spec.endswith(":"):
            raise ConfigError(
                f"backbone spec {spec!r} must look like SOURCE:NAME, for example "
                "'torchvision:resnet18', 'timm:vit_tiny_patch16_224' or 'python:my_pkg.models:build'")
        source, name = spec.split(":", 1)
        return cls(source, name, dict(options or {}))

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"


@dataclass
class DataConfig:
    """The input a backbone expects, for building transforms.

    ``resize_size`` is the shorter side before the centre crop at evaluation;
    when omitted it follows from ``crop_pct`` (``size / crop_pct``).
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    resize_size: int | None = None
    origin: str = "default"

    @property
    def image_size(self) -> int:
        return int(self.input_size[-1])

    @property
    def eval_resize(self) -> int:
        if self.resize_size is not None:
            return int(self.resize_size)
        return int(math.floor(self.image_size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct,
                "resize_size": self.eval_resize, "origin": self.origin}


def spec_of(model: nn.Module) -> BackboneSpec | None:
    """The spec a model was loaded from by :func:`load_backbone`, if any."""
    return getattr(model, "_thawkit_spec", None)


def arch_options(model: nn.Module) -> dict[str, Any]:
    """Builder options that rebuild ``model``'s architecture without its published weights.

    A source sets ``model._thawkit_arch_options`` when weights change the architecture
    (torchvision's googlenet/inception ``transform_input``, a vit's ``image_size``), so a
    trained model can be rebuilt with ``weights=None`` and its own weights loaded.
    """
    return dict(getattr(model, "_thawkit_arch_options", None) or {})


def load_backbone(spec: str, *, pm: ThawkitPluginManager | None = None, **options: Any) -> nn.Module:
    """Load a backbone by spec: ``"torchvision:resnet18"``, ``"timm:convnext_atto"``, ...

    Options go to the source: ``weights`` (torchvision: ``None``, ``"DEFAULT"``, an enum
    name or a local file), ``pretrained`` (timm), ``device="meta"`` to build without
    memory, and builder keyword arguments.

    Example::

        model = thawkit.load_backbone("torchvision:resnet18", weights="resnet18.safetensors")
    """
    from .plugin_manager import default_plugin_manager

    pm = pm or default_plugin_manager()
    parsed = BackboneSpec.parse(spec, options)
    source = pm.sources.get(parsed.source, where=f"backbone {spec!r}")
    model = source.load(parsed.name, dict(options))
    model._thawkit_spec = parsed
    return model


# ---------------------------------------------------------------- weight files
def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a tensors-only torch file.

    Never unpickles code: torch files load with ``weights_only=True`` and a file
    that needs more is refused. ``{"state_dict": ...}`` / ``{"model": ...}``
    wrappers and ``module.`` / ``_orig_mod.`` prefixes are unwrapped.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    if not path.is_file():
        raise WeightsError(f"weights path {str(path)!r} is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"weights file {str(path)!r} is not a valid safetensors file: {exc}") from None
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "weights_only" in str(exc) or "Unsupported global" in str(exc):
                raise WeightsError(
                    f"refusing to load {str(path)!r}: it contains pickled code or objects, not only "
                    f"tensors ({first}). Re-save it with torch.save(model.state_dict(), path) or as "
                    ".safetensors") from None
            raise _corrupt(path, first) from None
        except Exception as exc:  # torch raises many types on garbage (IndexError, KeyError, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise _corrupt(path, first) from None
    return _unwrap(state, path)


def _corrupt(path: Path, first: str) -> WeightsError:
    return WeightsError(f"weights file {str(path)!r} is corrupt or not a torch file: {first}")


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

