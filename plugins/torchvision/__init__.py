"""torchvision support: the ``torchvision`` source, layouts, heads, weight decay and data configs.

Source ``torchvision:NAME`` for the 80 classification models of
``torchvision.models`` (``thawkit models torchvision`` lists them). Options:

``weights``
    ``None`` (default: random init), ``"DEFAULT"``, an enum name such as
    ``"IMAGENET1K_V2"`` or ``"ResNet50_Weights.IMAGENET1K_V2"`` (or the enum member
    itself), or a local ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` / ``.safetensors``
    file. Published weights are fetched by torchvision's own code (the enum is passed
    to the builder; files are cached under ``torch.hub.get_dir()/checkpoints``, so a
    file placed there under the URL's basename loads offline). A local file is read
    safely (safetensors, or ``torch.load(weights_only=True)``: files that carry code
    are refused) into a model built with ``weights=None`` and must match it key for
    key, except for a classifier with another class count, which is dropped with a
    warning.
``num_classes``
    passed to the builder. Together with published weights (which torchvision
    refuses for ``num_classes != 1000``) the model is built with the published
    classes, the weights are loaded, and the classifier(s) - aux heads included -
    are then replaced by fresh ``num_classes`` ones, as ``adapt(num_classes=...)``
    would do.
``device``
    where the model ends up (built and loaded on the CPU, then moved). ``"meta"``
    builds the architecture without memory
    and never reads weights (no download, no file read; a missing file is still an
    error): with published weights the architecture is the one they imply (class
    count, vit image size, googlenet/inception ``transform_input``). Regnets, whose
    builders compute stage widths with tensors, are built on meta with those
    computations kept on the CPU.
anything else
    builder keyword arguments (``dropout=``, ``aux_logits=``, ``image_size=``, ...).

The layouts recognise torchvision models by class, so models built by hand work too.
"""
from __future__ import annotations

import fnmatch
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import WEIGHT_SUFFIXES, ConfigError, UnknownNameError, hookimpl, quote

from . import layouts as tvl

if TYPE_CHECKING:
    from torch import nn

    from thawkit import BackboneSpec, DataConfig, Layout, Split

WHERE = "torchvision source"


def classification_models() -> list[str]:
    """The classification model names of ``torchvision.models`` (80 in torchvision 0.29)."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


# ------------------------------------------------------------------- weights
def resolve_weights(name: str, weights: Any) -> tuple[str, Any]:
    """``("none", None)``, ``("enum", WeightsEnum member)`` or ``("file", Path)``."""
    import torchvision.models as tvm
    from torchvision.models import WeightsEnum

    if weights is None or weights is False:
        return "none", None
    if weights is True:
        weights = "DEFAULT"
    enum_cls = tvm.get_model_weights(name)
    available = [w.name for w in enum_cls]
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum_cls):
            raise ConfigError(
                f"{WHERE}: weights {type(weights).__name__}.{weights.name} are not weights of "
                f"{name!r}; available: DEFAULT, {', '.join(available)} ({enum_cls.__name__})")
        return "enum", weights
    if isinstance(weights, os.PathLike):
        return "file", Path(weights)
    if not isinstance(weights, str):
        raise ConfigError(f"{WHERE}: weights must be None, 'DEFAULT', a weights name or a "
                          f"file path, got {quote(weights)}")
    text = weights.strip()
    key = text
    if "." in text and not text.lower().endswith(WEIGHT_SUFFIXES):
        cls_name, _, member = text.rpartition(".")
        if cls_name == enum_cls.__name__:
            key = member
        elif cls_name.endswith("_Weights"):
            raise ConfigError(
                f"{WHERE}: weights {quote(text)} are not weights of {name!r}; available: "
                f"DEFAULT, {', '.join(available)} ({enum_cls.__name__})")
    if key.upper() == "DEFAULT":
        return "enum", enum_cls.DEFAULT
    if key.upper() in available:  # enum names are upper case; accept "imagenet1k_v2"
        return "enum", enum_cls[key.upper()]
    looks_like_path = text.lower().endswith(WEIGHT_SUFFIXES) or os.sep in text or "/" in text
    if looks_like_path or _exists(text):
        return "file", Path(text).expanduser()
    raise ConfigError(
        f"{WHERE}: unknown weights {quote(text)} for {name!r}; available: DEFAULT, "
        f"{', '.join(available)} ({enum_cls.__name__}), or a path to a "
        f"{'/'.join(WEIGHT_SUFFIXES)} file")


def _exists(text: str) -> bool:
    try:
        return Path(text).exists()
    except OSError:  # a name too long for a file name, ...
        return False


#: builder options that published weights fix and a rebuild without them must repeat
ARCH_OPTIONS = ("transform_input", "image_size", "input_size")


def _overwrite(kwargs: dict, key: str, value: Any) -> None:
    """torchvision's ``_ovewrite_named_param``: a conflicting user value is an error."""
    if key in kwargs and kwargs[key] != value:
        raise ConfigError(f"{WHERE}: {key}={kwargs[key]!r} does not fit the chosen weights, "
                          f"which need {key}={value!r}")
    kwargs[key] = value


def _weights_arch_kwargs(name: str, weights: Any, kwargs: dict) -> tuple[dict, bool]:
    """Builder kwargs that give the architecture ``weights`` imply, without loading them.

    Mirrors what torchvision's builders do with ``weights`` (used for meta builds).
    Returns the kwargs and whether googlenet/inception aux heads must be dropped after.
    """
    kwargs = dict(kwargs)
    meta = weights.meta
    drop_aux = False
    if name in ("googlenet", "inception_v3"):
        drop_aux = not kwargs.get("aux_logits", name == "inception_v3")
        kwargs.setdefault("transform_input", True)
        _overwrite(kwargs, "aux_logits", True)
        _overwrite(kwargs, "init_weights", False)
    if meta.get("categories") is not None:
        _overwrite(kwargs, "num_classes", len(meta["categories"]))
    if name.startswith("vit_"):
        _overwrite(kwargs, "image_size", meta["min_size"][0])
    if name.startswith("maxvit"):
        _overwrite(kwargs, "input_size", tuple(meta["min_size"]))
    return kwargs, drop_aux


# --------------------------------------------------------------------- build
_REGNET_LOCK = threading.Lock()


@contextmanager
def _regnet_widths_on_cpu():
    """Keep regnet's ``BlockParams.from_init_params`` tensors on the CPU inside a meta build.

    The builder turns computed widths into Python lists with ``.tolist()``, which a
    meta tensor cannot do. The patch lasts for the build only, under a lock.
    """
    import torch
    from torchvision.models import regnet

    cls = regnet.BlockParams
    original = cls.__dict__.get("from_init_params")
    if not isinstance(original, classmethod):
        yield
        return
    func = original.__func__

    def from_init_params(klass, *args, **kwargs):
        with torch.device("cpu"):
            return func(klass, *args, **kwargs)

    with _REGNET_LOCK:
        cls.from_init_params = classmethod(from_init_params)
        try:
            yield
        finally:
            cls.from_init_params = original


def _call_builder(name: str, kwargs: dict) -> nn.Module:
    import torchvision.models as tvm

    from .._builders import builder_errors

    shown = {k: v for k, v in kwargs.items() if k not in ("weights", "init_weights")}
    with builder_errors(f"torchvision:{name}", shown):
        return tvm.get_model(name, **kwargs)


def build(name: str, device: Any = None, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(name, **kwargs)`` on ``device`` (``"meta"`` included)."""
    import torch

    if name in ("googlenet", "inception_v3") and kwargs.get("weights") is None:
        # today's default, stated to silence torchvision's FutureWarning about it
        kwargs.setdefault("init_weights", True)
    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type == "cpu":
        return _call_builder(name, kwargs)
    if dev.type != "meta":
        return _call_builder(name, kwargs).to(dev)
    if name.startswith("regnet"):
        try:
            with _regnet_widths_on_cpu(), torch.device("meta"):
                return _call_builder(name, kwargs)
        except NotImplementedError:  # another torchvision: build on the CPU, then move
            return _call_builder(name, kwargs).to("meta")
    with torch.device("meta"):
        return _call_builder(name, kwargs)


class TorchvisionSource:
    """Backbones from ``torchvision.models`` (classification models)."""

    description = ("torchvision.models classifiers; options: "
                   "weights=None|'DEFAULT'|'IMAGENET1K_V2'|path.pth/.safetensors, "
                   "device='meta', num_classes=..., builder kwargs")

    def list_models(self, pattern: str | None = None) -> list[str]:
        names = classification_models()
        if pattern:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return names

    def load(self, name: str, options: dict[str, Any]) -> nn.Module:
        """Build ``name``; the module docstring explains the options."""
        import torch

        from thawkit import WeightsError

        from ..weights import apply_weights, not_a_file, read_weights

        names = classification_models()
        if name not in names:
            raise UnknownNameError("torchvision model", name, names, where=WHERE)
        opts = dict(options)
        device = opts.pop("device", None)
        kind, weights = resolve_weights(name, opts.pop("weights", None))
        try:
            on_meta = device is not None and torch.device(device).type == "meta"
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"{WHERE}: invalid device {device!r}: {exc}") from None

        if kind == "none":
            return build(name, device, **opts)

        if kind == "file":
            if on_meta:
                problem = not_a_file(weights)
                if problem:
                    raise WeightsError(f"weights file {quote(str(weights))} {problem}")
                return build(name, device, **opts)
            model = build(name, None, **opts)
            state = read_weights(weights)
            apply_weights(model, state, file=str(weights), head_prefixes=tvl.head_prefixes(model))
            return model.to(device) if device is not None else model

        # published weights
        categories = weights.meta.get("categories")
        new_classes = None
        if categories is not None and opts.get("num_classes", len(categories)) != len(categories):
            new_classes = opts.pop("num_classes")
        kwargs, drop_aux = _weights_arch_kwargs(name, weights, opts)
        if on_meta:
            model = build(name, device, **kwargs)
            if drop_aux:
                tvl.remove_aux(model)
        else:
            model = build(name, None, weights=weights, **opts)
        if new_classes is not None:
            tvl.replace_head(model, int(new_classes), 0.0, keep_aux=True)
        # what rebuilds this architecture without the published weights (a run's own
        # weights loaded into a model built with weights=None): googlenet/inception's
        # input transform and aux heads, vit/maxvit's input size
        arch = {k: kwargs[k] for k in ARCH_OPTIONS if k in kwargs}
        if name in ("googlenet", "inception_v3"):
            arch["aux_logits"] = not drop_aux
        model._thawkit_arch_options = arch
        return model.to(device) if device is not None and not on_meta else model


# --------------------------------------------------------------------- hooks
# Plain hookimpls, like any plugin's: plugins registered later (entry points, runtime
# plugins) are asked first and override these decisions; core's ``trylast`` fallbacks
# answer only when no plugin does (see thawkit/hookspecs.py).
@hookimpl
def thawkit_register_sources(register):
    register("torchvision", TorchvisionSource())


def _is_torchvision(model: nn.Module) -> bool:
    return tvl.family_of(model) is not None


@hookimpl
def thawkit_describe_layout(model: nn.Module, spec: BackboneSpec | None) -> Layout | None:
    if not _is_torchvision(model):
        return None
    return tvl.describe(model)


@hookimpl
def thawkit_replace_head(model: nn.Module, layout: Layout, num_classes: int, dropout: float,
                         keep_aux: bool) -> nn.Module | None:
    if not _is_torchvision(model) or (layout is not None and layout.source != "torchvision"):
        return None  # described by another plugin (or the generic fallback): let it replace
    return tvl.replace_head(model, num_classes, dropout, keep_aux)


@hookimpl
def thawkit_no_weight_decay(model: nn.Module) -> list[str] | None:
    if not _is_torchvision(model):
        return None
    return tvl.no_weight_decay(model)


@hookimpl
def thawkit_data_config(model: nn.Module, spec: BackboneSpec | None) -> DataConfig | None:
    if not _is_torchvision(model):
        return None
    from .data import data_config

    return data_config(model, spec)


@hookimpl
def thawkit_split_model(model: nn.Module, layout: Layout, block: str) -> Split | None:
    """Every family whose forward pass is a sequence of steps (all but googlenet and inception)."""
    if not _is_torchvision(model) or layout.source != "torchvision":
        return None
    from .split import split

    return split(model, layout, block)
