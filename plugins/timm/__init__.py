"""timm support: the ``timm:`` source, layouts from ``group_matcher``, heads, layer decay, optimizers.

Loading::

    thawkit.load_backbone("timm:convnext_atto")                       # random init
    thawkit.load_backbone("timm:convnext_atto", pretrained=True)      # timm's hub download
    thawkit.load_backbone("timm:convnext_atto", weights="w.safetensors", num_classes=10)
    thawkit.load_backbone("timm:vit_large_patch16_224", device="meta")  # no memory

* ``pretrained=True`` uses timm's own download and cache (Hugging Face hub).
* ``weights=PATH`` (``.safetensors``, ``.pth``, ``.pt``...) is read with thawkit's
  safe reader (never unpickles code), passed through the model module's
  ``checkpoint_filter_fn`` when the file does not already fit (original-format
  checkpoints, another ``img_size``), and loaded strictly, except that a head
  for another number of classes is dropped with a warning. A checkpoint
  without any head (a feature extractor) leaves the head freshly initialised.
* Other options (``num_classes``, ``img_size``, ``in_chans``, ``drop_rate``,
  ``drop_path_rate``...) go to ``timm.create_model``.

Models that timm builds without a classifier (``num_classes=0`` by default:
dinov2, clip, siglip, eva, aimv2...) must be given one before they are adapted:
load them with ``num_classes=N`` (or call ``model.reset_classifier(N)``).
timm's ``*_enc`` encoders (VLM vision towers) have no classification head at
all: their layout can be described, but their head cannot be replaced.

Optimizers: every timm optimizer name (``lamb``, ``lion``, ``adan``, ``sgdp``...)
except those torch.optim also provides (the torch names win), those that need
bitsandbytes, apex or CUDA (``bnb*``, ``fused*``), and the second-order ones
that need ``backward(create_graph=True)`` (``adahessian``).

Nothing here imports torch or timm until a hook is called.

Decision hooks are plain ``@hookimpl`` (as in the torchvision plugin): plugins
registered later are asked first, core's ``trylast`` fallbacks last, whatever
the order core registers itself in.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError, UnknownNameError, WeightsError, hookimpl, quote

from .layout import describe, final_classifiers, is_timm, reset_head

if TYPE_CHECKING:
    import torch
    from thawkit import BackboneSpec, DataConfig, Layout, Split
    from torch import nn


# ---------------------------------------------------------------------- source
class TimmSource:
    """``timm:NAME``: any ``timm.create_model`` architecture, optionally with a ``.tag``."""

    description = "timm (PyTorch Image Models): create_model, pretrained=True or local weights="

    def list_models(self, pattern: str | None = None) -> list[str]:
        """Architecture names (no pretrained tags), filtered by an fnmatch ``pattern``."""
        import timm

        return timm.list_models(pattern or "")

    def load(self, name: str, options: dict[str, Any]) -> nn.Module:
        import timm

        from .._builders import builder_errors, weight_options

        opts = dict(options)
        where = f"backbone 'timm:{name}'"
        pretrained, weights, device = weight_options(opts, where)
        if pretrained and str(device) == "meta":
            raise ConfigError(f"{where}: pretrained weights cannot be loaded on the meta device")
        if not timm.is_model(name):
            raise UnknownNameError("timm model", name, timm.list_models(), where=where)
        if weights is not None:
            _check_weights_file(name, weights)
        meta = str(device) == "meta"
        with _on_meta() if meta else contextlib.nullcontext():
            try:
                with builder_errors(f"timm:{name}", opts):
                    model = timm.create_model(name, pretrained=pretrained, **opts)
            except ConfigError as exc:
                if "pretrained tag" not in str(exc):
                    raise
                arch = name.split(".", 1)[0]
                raise UnknownNameError("timm pretrained tag", name,
                                       timm.list_pretrained(f"{arch}.*"), where=where) from None
        if weights is not None:
            load_weights(model, weights, name)
        if device is not None and not meta:
            model.to(device)
        return model


def _check_weights_file(name: str, weights: Any) -> None:
    """timm's published weights come with ``pretrained``; ``weights`` is a local file only."""
    from ..weights import not_a_file

    problem = not_a_file(Path(weights))
    if problem:
        raise WeightsError(f"backbone.weights: weights file {quote(str(weights))} {problem}; timm:"
                           f"{name} takes its published weights with pretrained: true (in a recipe, "
                           "backbone.pretrained: true), and weights names a local file only")


#: in-place initialisers (tensor methods and ``torch.nn.init`` functions) that return their input
_INIT_OPS = frozenset({
    "normal_", "uniform_", "trunc_normal_", "zero_", "zeros_", "ones_", "fill_", "constant_", "copy_",
    "clamp_", "clamp_min_", "clamp_max_", "erfinv_", "mul_", "add_", "sub_", "div_", "exponential_",
    "bernoulli_", "log_normal_", "random_", "fill_diagonal_", "masked_fill_", "abs_", "sqrt_", "neg_",
    "exp_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
    "eye_", "dirac_", "sparse_",
})


@contextlib.contextmanager
def _on_meta():
    """Build on the meta device, skipping in-place initialisation of meta tensors.

    A meta tensor holds no data, so initialising it changes nothing, yet torch
    still runs each initialiser through its Python reference implementation:
    that is two thirds of building a timm model on meta. Only in-place ops,
    which return their (unchanged) input, are skipped; shapes, dtypes and
    ``requires_grad`` come out the same.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    class SkipMetaInit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", None) in _INIT_OPS and args \
                    and isinstance(args[0], torch.Tensor) and args[0].is_meta:
                return args[0]
            return func(*args, **(kwargs or {}))

    with torch.device("meta"), SkipMetaInit():
        yield


def _filter_fn(model: nn.Module, name: str) -> Callable | None:
    """The ``checkpoint_filter_fn`` of the module that registers ``name``, else of the model's class."""
    from timm.models import model_entrypoint

    modules = [sys.modules.get(model_entrypoint(name).__module__), sys.modules.get(type(model).__module__)]
    return next((m.checkpoint_filter_fn for m in modules
                 if m is not None and callable(getattr(m, "checkpoint_filter_fn", None))), None)


def _head_prefixes(model: nn.Module) -> list[str]:
    cls = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    names = [cls] if isinstance(cls, str) else list(cls or ())
    return sorted(set(final_classifiers(model)) | set(names))


def _fits(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], head: list[str]) -> bool:
    """Whether ``state`` already has the model's keys and (outside the head) shapes."""
    def in_head(k: str) -> bool:
        return any(k == p or k.startswith(p + ".") for p in head)

    return set(state) == set(own) and all(
        in_head(k) or tuple(v.shape) == tuple(own[k].shape) for k, v in state.items())


def load_weights(model: nn.Module, path: Any, name: str) -> None:
    """Load a local weights file into a timm model (see the module docstring)."""
    from ..weights import apply_weights, read_weights

    state = read_weights(path)
    file = str(path)
    own = model.state_dict()
    head = _head_prefixes(model)
    filter_fn = _filter_fn(model, name)
    failed = None
    if filter_fn is not None and not _fits(state, own, head):
        try:
            try:
                state = filter_fn(dict(state), model)
            except TypeError:  # filters of one argument, as timm's own loader allows
                state = filter_fn(dict(state))
        except Exception as exc:  # noqa: BLE001 - another format: report the keys below
            failed = f"; timm's checkpoint filter for {name} failed too ({type(exc).__name__}: {exc})"
    state = _adapt_input_convs(model, state, own)

    def in_head(k: str) -> bool:
        return any(k == p or k.startswith(p + ".") for p in head)

    own_head = [k for k in own if in_head(k)]
    file_head = [k for k in state if in_head(k)]
    if own_head and not file_head and any(k in own for k in state):
        warnings.warn(f"{file}: the checkpoint has no classifier ({', '.join(own_head)}); "
                      "the head stays freshly initialised", stacklevel=3)
        state.update({k: own[k] for k in own_head})
    elif file_head and not own_head:
        warnings.warn(f"{file}: the model has no classifier (num_classes=0); the checkpoint's "
                      f"head ({', '.join(file_head)}) is ignored", stacklevel=3)
        state = {k: v for k, v in state.items() if k not in file_head}
    try:
        apply_weights(model, state, file=file, head_prefixes=head)
    except WeightsError as exc:
        raise WeightsError(f"{exc}{failed or ''}") from None
    left = [n for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:
        raise ConfigError(
            f"timm:{name} built on the meta device keeps tensors the weights file does not hold "
            f"({', '.join(left[:5])}{' ...' if len(left) > 5 else ''}); load it without device='meta'")


def _adapt_input_convs(model: nn.Module, state: dict, own: dict) -> dict:
    """Fold or repeat first-conv weights for another ``in_chans``, like timm's pretrained loader."""
    from timm.models import adapt_input_conv

    convs = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    for conv in [convs] if isinstance(convs, str) else list(convs or ()):
        key = f"{conv}.weight"
        if key in state and key in own and state[key].ndim == 4 and own[key].ndim == 4 \
                and state[key].shape[1] != own[key].shape[1]:
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
    return state


@hookimpl
def thawkit_register_sources(register: Callable[..., None]) -> None:
    register("timm", TimmSource())


# ---------------------------------------------------------------- model hooks
@hookimpl
def thawkit_describe_layout(model: nn.Module, spec: BackboneSpec | None) -> Layout | None:
    """timm models, and models written to timm's conventions (``group_matcher``,
    ``get_classifier``, ``reset_classifier``; see ``layout.is_timm``):
    ``group_matcher(coarse=True)`` groups -> stem and blocks.

    Group 0 is the stem when the matcher names it so; parameters no pattern
    matches (final norms, the non-final part of composite heads) form the neck;
    the Linear/Conv layers with ``num_classes`` outputs inside what
    ``get_classifier()`` returns are the head. Models without a coarse matcher
    get blocks from their top-level children, stage containers split.
    """
    if not is_timm(model):
        return None
    return describe(model)


@hookimpl
def thawkit_replace_head(model: nn.Module, layout: Layout, num_classes: int, dropout: float,
                         keep_aux: bool) -> nn.Module | None:
    """``model.reset_classifier(num_classes)``, on the old head's device and dtype."""
    if not is_timm(model):
        return None
    return reset_head(model, layout, num_classes, dropout)


@hookimpl
def thawkit_layer_scales(model: nn.Module, layout: Layout, layer_decay: float,
                         min_scale: float) -> dict[str, float] | None:
    """Scales exactly as ``timm.optim.param_groups_layer_decay`` computes them, for every parameter.

    Layers come from ``group_matcher(coarse=False)`` (``auto_group_layers``
    without one); the last layer has scale 1, unmapped parameters too.
    """
    if not is_timm(model):
        return None
    from timm.models import group_parameters
    from timm.optim._param_groups import auto_group_layers

    if hasattr(model, "group_matcher"):
        layer_map = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    else:
        layer_map = auto_group_layers(model)
    layer_max = max(layer_map.values())
    return {name: max(min_scale, layer_decay ** (layer_max - layer_map.get(name, layer_max)))
            for name, _ in model.named_parameters()}


@hookimpl
def thawkit_data_config(model: nn.Module, spec: BackboneSpec | None) -> DataConfig | None:
    # a model written to timm's conventions outside timm has a data config only if it says so
    if not is_timm(model) or not (type(model).__module__.startswith("timm.")
                                  or getattr(model, "pretrained_cfg", None)):
        return None
    from thawkit import DataConfig
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    size, origin = tuple(cfg["input_size"]), "timm pretrained_cfg"
    # a model built with another img_size keeps its pretrained_cfg's size, which its patch
    # embedding then refuses: the size it was built for wins
    embed = getattr(model, "patch_embed", None)
    built = getattr(embed, "img_size", None)
    if getattr(embed, "strict_img_size", False) and not getattr(embed, "dynamic_img_size", False) \
            and isinstance(built, tuple) and len(built) == 2 and tuple(built) != size[1:]:
        size, origin = (size[0], *built), "timm pretrained_cfg, input size as built"
    return DataConfig(input_size=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      interpolation=cfg["interpolation"], crop_pct=float(cfg["crop_pct"]), origin=origin)


@hookimpl
def thawkit_split_model(model: nn.Module, layout: Layout, block: str) -> Split | None:
    """ViT, ResNet, ConvNeXt, EfficientNet, MobileNetV3, RegNet and Swin (``thawkit.plugins.timm.split``)."""
    if not is_timm(model):
        return None
    from .split import split

    return split(model, layout, block)


# ------------------------------------------------------------------ optimizers
def timm_optimizer_names() -> list[str]:
    """timm optimizers thawkit registers (see the module docstring for what is left out)."""
    import torch
    from timm.optim import get_optimizer_info, list_optimizers

    torch_names = {n.lower() for n in dir(torch.optim)}
    return [n for n in list_optimizers()
            if n not in torch_names and not n.startswith(("bnb", "fused"))
            and not get_optimizer_info(n).second_order]


def _optimizer_factory(name: str) -> Callable[..., torch.optim.Optimizer]:
    from timm.optim import get_optimizer_info

    def factory(param_groups: list[dict], **kwargs: Any) -> torch.optim.Optimizer:
        from timm.optim import create_optimizer_v2

        from .._builders import optimizer_errors

        with optimizer_errors(name, {k: v for k, v in kwargs.items() if k not in ("lr", "weight_decay")}):
            return create_optimizer_v2(param_groups, opt=name, **kwargs)

    factory.__name__ = f"timm_{name}"
    factory.__doc__ = f"timm.optim.create_optimizer_v2(param_groups, opt={name!r}, **kwargs)"
    factory.accepts = get_optimizer_info(name).opt_class  # the keyword arguments it takes, for checks
    return factory


@hookimpl
def thawkit_register_optimizers(register: Callable[..., None]) -> None:
    # listing them imports timm.optim (seconds): deferred until a name the other plugins do not
    # give is asked for, so a recipe with a torch optimizer and a torchvision model never imports timm
    register.defer(lambda: [(name, _optimizer_factory(name)) for name in timm_optimizer_names()])
