"""Backbone specs, loading through source plugins, and the data config a backbone expects."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from .plugin_manager import ThawkitPluginManager

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


@dataclass(frozen=True)
class BackboneSpec:
    """Where a backbone comes from: ``source:name`` plus loader options.

    ``arch_options`` are the builder options that rebuild the architecture without the
    weights it was loaded with (see :func:`arch_options`); the source says which.
    """

    source: str
    name: str
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    arch_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

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

    Published weights can change an architecture (torchvision's googlenet/inception
    ``transform_input`` and auxiliary heads, a ViT's ``image_size``). A model built again
    with ``weights=None, **arch_options(model)`` takes the trained model's own weights (the
    training plugin saves these options in a run's recipe). They travel in the model's
    :class:`BackboneSpec`: a source that has them defines
    ``arch_options(name, options) -> dict``, and :func:`load_backbone` records its answer.
    Empty for a model that :func:`load_backbone` did not load. Example::

        model = thawkit.load_backbone("torchvision:googlenet", weights="DEFAULT")
        thawkit.arch_options(model)   # {'transform_input': True, 'aux_logits': True}
    """
    spec = spec_of(model)
    return dict(spec.arch_options) if spec is not None else {}


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
    entry = pm.sources.entry(parsed.source, where=f"backbone {spec!r}")
    source = entry.obj
    with pm.guard(entry.plugin, f"source {parsed.source!r}: load({parsed.name!r})"):
        model: nn.Module = source.load(parsed.name, dict(options))
        if not callable(getattr(model, "named_parameters", None)):
            raise TypeError(f"load() returned {type(model).__name__}, not an nn.Module")
    with pm.guard(entry.plugin, f"source {parsed.source!r}: arch_options({parsed.name!r})"):
        arch = _arch_options(source, parsed, model, entry.plugin)
    model._thawkit_spec = replace(parsed, arch_options=arch)
    return model


def _arch_options(source: Any, spec: BackboneSpec, model: nn.Module, plugin: str) -> dict[str, Any]:
    """The source's ``arch_options(name, options)``, or what an older source left on the model."""
    if callable(getattr(source, "arch_options", None)):
        arch = source.arch_options(spec.name, dict(spec.options))
        if not isinstance(arch, dict):
            raise TypeError(f"arch_options() returned {type(arch).__name__}, not a dict")
        return dict(arch)
    legacy = vars(model).get("_thawkit_arch_options")  # how sources passed them before
    if legacy:
        warnings.warn(f"plugin {plugin!r}: source {spec.source!r} sets model._thawkit_arch_options, "
                      "which is deprecated: define arch_options(name, options) on the source instead "
                      "(see thawkit.arch_options)", DeprecationWarning, stacklevel=3)
        return dict(legacy)
    return {}
