"""The public functions: load and describe a backbone, replace its head, adapt it by strategy name."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .adapted import Adapted
from .backbone import DataConfig, spec_of
from .errors import ConfigError, LayoutError
from .strategy import Strategy

if TYPE_CHECKING:
    from torch import nn

    from .layout import Layout
    from .plugin_manager import ThawkitPluginManager


def _pm(pm: ThawkitPluginManager | None) -> ThawkitPluginManager:
    from .plugin_manager import default_plugin_manager

    return pm or default_plugin_manager()


def describe_layout(model: nn.Module, *, pm: ThawkitPluginManager | None = None,
                    require_head: bool = True) -> Layout:
    """The model's layout from the first plugin that knows it, checked to cover every parameter once."""
    layout: Layout | None = _pm(pm).hook.thawkit_describe_layout(model=model, spec=spec_of(model))
    if layout is None:
        raise LayoutError(f"no plugin could describe {type(model).__name__}")
    return layout.validate(model, require_head=require_head)


def replace_head(model: nn.Module, num_classes: int, *, dropout: float = 0.0, keep_aux: bool = False,
                 pm: ThawkitPluginManager | None = None) -> tuple[nn.Module, Layout]:
    """Replace the classifier(s) for ``num_classes`` outputs; returns the model and its new layout."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 0 < num_classes <= 10**6:
        raise ConfigError(f"head.num_classes must be an integer from 1 to 10**6, got {num_classes!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"head.dropout must be in [0, 1), got {dropout!r}")
    pm = _pm(pm)
    layout = describe_layout(model, pm=pm, require_head=False)
    spec = spec_of(model)
    new = pm.hook.thawkit_replace_head(model=model, layout=layout, num_classes=num_classes,
                                       dropout=float(dropout), keep_aux=keep_aux)
    if new is None:
        raise LayoutError(f"no plugin can replace the head of {type(model).__name__} "
                          f"(classifier paths: {layout.classifiers or 'none found'})")
    if spec is not None:
        new._thawkit_spec = spec
    return new, describe_layout(new, pm=pm)


def data_config(model: nn.Module, *, pm: ThawkitPluginManager | None = None) -> DataConfig:
    """Input size, mean/std, interpolation and crop the backbone expects."""
    config: DataConfig = _pm(pm).hook.thawkit_data_config(model=model, spec=spec_of(model))
    return config


def list_strategies(*, pm: ThawkitPluginManager | None = None) -> list[str]:
    """Names of every registered strategy."""
    return _pm(pm).strategies.names()


def list_optimizers(*, pm: ThawkitPluginManager | None = None) -> list[str]:
    """Names of every registered optimizer."""
    return _pm(pm).optimizers.names()


def list_sources(*, pm: ThawkitPluginManager | None = None) -> list[str]:
    """Names of every registered backbone source."""
    return _pm(pm).sources.names()


def adapt(model: nn.Module, strategy: str | Strategy, *, num_classes: int | None = None,
          dropout: float = 0.0, keep_aux: bool = False, pm: ThawkitPluginManager | None = None,
          **params: Any) -> Adapted:
    """Replace the head (when ``num_classes`` is given) and apply a strategy.

    ``strategy`` is a registered name (``thawkit strategies`` lists them) with its
    parameters as keyword arguments (validated by the strategy's ``Params`` model),
    or a :class:`Strategy` instance already holding validated parameters (a recipe's
    ``recipe.strategy.instance``). Every strategy takes ``norm`` = ``"frozen"``
    (default), ``"affine"`` or ``"train"`` for normalisation layers in frozen blocks.

    Example::

        adapted = thawkit.adapt(model, "gradual", num_classes=10, every=2)
        optimizer = adapted.optimizer("adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.8)
        for epoch in range(epochs):
            adapted.on_epoch_start(epoch)
            ...
    """
    from .strategy import strategy_instance

    pm = _pm(pm)
    if isinstance(strategy, Strategy):
        if params:
            raise ConfigError(f"adapt(): strategy {strategy.name!r} is given as an instance with its "
                              f"parameters; pass {', '.join(sorted(params))} to its Params instead")
        chosen = strategy
    else:
        chosen = strategy_instance(strategy, params, pm=pm)
    if num_classes is not None:
        model, layout = replace_head(model, num_classes, dropout=dropout, keep_aux=keep_aux, pm=pm)
    else:
        layout = describe_layout(model, pm=pm)
    entry = pm.strategies.entry(chosen.name) if chosen.name in pm.strategies else None
    with pm.guard(entry.plugin if entry else None, f"strategy {chosen.name!r}: prepare()"):
        prepared = chosen.prepare(model, layout)
    if prepared is not None:
        model, layout = prepared, describe_layout(prepared, pm=pm)
    adapted = Adapted(model, layout, chosen, pm=pm)
    pm.hook.thawkit_adapted(adapted=adapted)
    return adapted


