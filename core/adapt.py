"""``adapt()``: layout, head replacement, strategy phases, norm policy and the plan, in one object."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backbone import DataConfig, spec_of
from .errors import ConfigError, LayoutError

if TYPE_CHECKING:
    from torch import nn

    from .layout import Layout
    from .manager import ThawkitPluginManager


def _pm(pm: ThawkitPluginManager | None) -> ThawkitPluginManager:
    from .manager import default_plugin_manager

    return pm or default_plugin_manager()


def describe_layout(model: nn.Module, *, pm: ThawkitPluginManager | None = None) -> Layout:
    """The model's layout from the first plugin that knows it, checked to cover every parameter once."""
    layout = _pm(pm).hook.thawkit_describe_layout(model=model, spec=spec_of(model))
    if layout is None:
        raise LayoutError(f"no plugin could describe {type(model).__name__}")
    return layout.validate(model)


def replace_head(model: nn.Module, num_classes: int, *, dropout: float = 0.0, keep_aux: bool = False,
                 pm: ThawkitPluginManager | None = None) -> tuple[nn.Module, Layout]:
    """Replace the classifier(s) for ``num_classes`` outputs; returns the model and its new layout."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"head.num_classes must be a positive integer, got {num_classes!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"head.dropout must be in [0, 1), got {dropout!r}")
    pm = _pm(pm)
    layout = describe_layout(model, pm=pm)
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
    return _pm(pm).hook.thawkit_data_config(model=model, spec=spec_of(model))


def list_strategies(*, pm: ThawkitPluginManager | None = None) -> list[str]:
    """Names of every registered strategy."""
    return _pm(pm).strategies.names()


def list_optimizers(*, pm: ThawkitPluginManager | None = None) -> list[str]:
    return _pm(pm).optimizers.names()


def list_sources(*, pm: ThawkitPluginManager | None = None) -> list[str]:
    return _pm(pm).sources.names()


def adapt(model: nn.Module, strategy: str, *, num_classes: int | None = None, **kw: Any):
    raise NotImplementedError  # filled in below
