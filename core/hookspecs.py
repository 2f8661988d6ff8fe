"""Every hook thawkit defines. Read this file first.

A plugin is any module or object with functions decorated by
:data:`thawkit.hookimpl` and named after a hook below. Built-in support
(torchvision, timm, the strategies, the optimizers) is written as ordinary
plugins registered before any third-party plugin; pluggy asks the newest
plugin first, so a third-party plugin overrides a built-in decision by
implementing the same hook, and a built-in registry entry by registering the
same name with ``replace=True``. Core's generic fallbacks answer last.

Two kinds of hook:

* **collector hooks** (``thawkit_register_*``) are handed a ``register``
  callable. thawkit owns de-duplication: the same name from two plugins is an
  error naming both, unless the later one passes ``replace=True``.
* **decision hooks** are ``firstresult``: plugins are asked in turn (newest
  first, built-in defaults last) and the first non-``None`` answer wins.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any
from collections.abc import Callable

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from .backbone import BackboneSpec, DataConfig
    from .layout import Layout

hookspec = pluggy.HookspecMarker("thawkit")


@hookspec
def thawkit_register_sources(register: Callable[..., None]) -> None:
    """Register backbone sources: the part before the colon in ``"torchvision:resnet18"``.

    Parameters:
        register: call ``register(name, source, replace=False)``. ``source`` is an
            object with ``load(name: str, options: dict) -> nn.Module`` and
            ``list_models(pattern: str | None = None) -> list[str]``; it may also
            define ``description: str``.

    Returns: nothing (all implementations are called).

    Example::

        @thawkit.hookimpl
        def thawkit_register_sources(register):
            register("mymodels", MyModelZoo())
    """


@hookspec(firstresult=True)
def thawkit_describe_layout(model: nn.Module, spec: BackboneSpec | None) -> Layout | None:
    """Describe ``model``'s layout: stem, ordered blocks, neck, head and classifier path(s).

    Parameters:
        model: the backbone (possibly on the meta device).
        spec: how it was loaded (source, name, options), or ``None`` for a model the
            user built themselves.

    Returns: a :class:`thawkit.Layout` for models this plugin knows, else ``None``.
    First non-None result wins; core's generic fallback (last ``nn.Linear`` is the
    head, top-level children are blocks) answers last for any ``nn.Module``.

    Example::

        @thawkit.hookimpl
        def thawkit_describe_layout(model, spec):
            if isinstance(model, MyNet):
                return thawkit.layout_from_prefixes(model, stem=["stem"],
                    blocks=[(f"stage{i}", [f"stages.{i}"]) for i in range(4)],
                    head=["fc"], classifiers=["fc"])
    """


@hookspec(firstresult=True)
def thawkit_replace_head(
    model: nn.Module, layout: Layout, num_classes: int, dropout: float, keep_aux: bool
) -> nn.Module | None:
    """Replace the final classifier(s) of ``model`` with fresh ones for ``num_classes``.

    Parameters:
        model: the backbone, modified in place.
        layout: its layout (``layout.classifiers`` names the module paths).
        num_classes: number of outputs of the new head.
        dropout: probability of a dropout inserted before the new classifier (0: none).
        keep_aux: keep auxiliary heads (googlenet, inception), replaced as well,
            instead of removing them.

    Returns: the adapted model (usually ``model`` itself) when this plugin handled it,
    else ``None``. First non-None result wins; core's fallback replaces an
    ``nn.Linear`` or 1x1 ``nn.Conv2d`` classifier on the same device and dtype.

    Example::

        @thawkit.hookimpl
        def thawkit_replace_head(model, layout, num_classes, dropout, keep_aux):
            if isinstance(model, MyNet):
                model.fc = nn.Linear(model.fc.in_features, num_classes)
                return model
    """


@hookspec(firstresult=True)
def thawkit_data_config(model: nn.Module, spec: BackboneSpec | None) -> DataConfig | None:
    """The input a backbone expects: size, mean/std, interpolation and crop fraction.

    Parameters:
        model: the backbone.
        spec: how it was loaded, or ``None``.

    Returns: a :class:`thawkit.DataConfig`, or ``None`` if this plugin does not know the
    model. First non-None result wins; core falls back to 224 px ImageNet statistics.

    Example::

        @thawkit.hookimpl
        def thawkit_data_config(model, spec):
            if spec and spec.source == "mymodels":
                return thawkit.DataConfig(input_size=(3, 96, 96))
    """


@hookspec
def thawkit_no_weight_decay(model: nn.Module) -> list[str] | None:
    """Parameter names (fnmatch patterns allowed) that must not be weight-decayed.

    Biases, normalisation weights and 1-D parameters are never decayed anyway; this
    hook adds model-specific names such as ``pos_embed`` or ``cls_token``.

    Parameters:
        model: the adapted model (head already replaced).

    Returns: an iterable of names or ``None``; results of all plugins are merged.
    Core's own implementation returns ``model.no_weight_decay()`` when the model
    defines it (timm's convention).

    Example::

        @thawkit.hookimpl
        def thawkit_no_weight_decay(model):
            if isinstance(model, MyViT):
                return ["pos_embedding", "class_token"]
    """


@hookspec(firstresult=True)
def thawkit_layer_scales(
    model: nn.Module, layout: Layout, layer_decay: float, min_scale: float
) -> dict[str, float] | None:
    """Learning-rate scale of every parameter under layer-wise LR decay.

    Parameters:
        model, layout: the adapted model and its layout.
        layer_decay: the decay factor (scale = layer_decay ** distance from the head).
        min_scale: lower bound on any scale.

    Returns: ``{param_name: scale}`` covering every parameter, or ``None``. First
    non-None result wins; core's fallback uses the layout's blocks (stem, blocks,
    neck+head). The timm plugin answers with timm's fine ``group_matcher`` so scales
    equal ``timm.optim.param_groups_layer_decay``.

    Example::

        @thawkit.hookimpl
        def thawkit_layer_scales(model, layout, layer_decay, min_scale):
            return {name: 1.0 for name, _ in model.named_parameters()}  # no decay
    """


@hookspec
def thawkit_register_strategies(register: Callable[..., None]) -> None:
    """Register freezing strategies, picked by name in ``adapt()`` and recipes.

    Parameters:
        register: call ``register(StrategyClass, replace=False)``. The class subclasses
            :class:`thawkit.Strategy` and sets ``name``, ``description`` and,
            optionally, ``Params`` (a pydantic model validating its parameters).

    Returns: nothing (all implementations are called).

    Example::

        @thawkit.hookimpl
        def thawkit_register_strategies(register):
            register(EveryOtherBlock)
    """


@hookspec
def thawkit_register_optimizers(register: Callable[..., None]) -> None:
    """Register optimizers by name.

    Parameters:
        register: call ``register(name, factory, replace=False)`` where
            ``factory(param_groups: list[dict], **kwargs) -> torch.optim.Optimizer``;
            each group carries its own ``lr`` and ``weight_decay``.

    Returns: nothing (all implementations are called).

    Example::

        @thawkit.hookimpl
        def thawkit_register_optimizers(register):
            register("sgd-nesterov", lambda groups, **kw: torch.optim.SGD(
                groups, momentum=0.9, nesterov=True, **kw))
    """


@hookspec
def thawkit_register_schedules(register: Callable[..., None]) -> None:
    """Register learning-rate schedules for ``thawkit train``.

    Parameters:
        register: call ``register(name, factory, replace=False)`` where
            ``factory(optimizer, *, epochs: int, steps_per_epoch: int, warmup_epochs: float,
            **params)`` returns a ``torch.optim.lr_scheduler`` object (``warmup_epochs``
            is the recipe's ``schedule.warmup_epochs``, passed to every schedule). An optional attribute
            ``factory.Params`` (pydantic model) validates ``params``; an optional
            ``factory.interval`` is ``"step"`` (default) or ``"epoch"``.

    Returns: nothing (all implementations are called).

    Example::

        @thawkit.hookimpl
        def thawkit_register_schedules(register):
            register("exp", lambda opt, *, epochs, steps_per_epoch, warmup_epochs=0, gamma=0.999:
                     torch.optim.lr_scheduler.ExponentialLR(opt, gamma))
    """


@hookspec
def thawkit_adapted(adapted: Any) -> None:
    """Called once ``adapt()`` has replaced the head and applied the strategy's first phase.

    Parameters:
        adapted: the :class:`thawkit.Adapted` object (model, layout, plan, strategy).

    Returns: nothing; use it to log, wrap or check. All implementations are called.

    Example::

        @thawkit.hookimpl
        def thawkit_adapted(adapted):
            print(adapted.plan.summary())
    """
