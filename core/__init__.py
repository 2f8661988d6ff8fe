"""thawkit: adapt pretrained PyTorch vision models to new tasks, correctly.

The public API is imported lazily so that ``thawkit --help`` never imports torch::

    import thawkit
    model = thawkit.load_backbone("torchvision:resnet18")
    adapted = thawkit.adapt(model, "last-block", num_classes=10, blocks=1)
    optimizer = adapted.optimizer("adamw", lr=1e-3, weight_decay=0.05)
"""
from __future__ import annotations

import importlib
from typing import Any

from .manager import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "load_backbone": "backbone", "BackboneSpec": "backbone", "DataConfig": "backbone",
    "read_weights": "backbone", "spec_of": "backbone",
    "adapt": "adapting", "Adapted": "adapting", "replace_head": "adapting",
    "describe_layout": "adapting", "data_config": "adapting",
    "list_strategies": "adapting", "list_optimizers": "adapting", "list_sources": "adapting",
    "Strategy": "strategy", "StrategyParams": "strategy", "Phase": "strategy",
    "Layout": "layout", "Block": "layout", "layout_from_prefixes": "layout",
    "generic_layout": "layout",
    "Plan": "plan",
    "get_plugin_manager": "manager", "default_plugin_manager": "manager",
    "reset_plugin_manager": "manager", "register": "manager", "DEFAULT_PLUGINS": "manager",
    "ThawkitError": "errors", "ConfigError": "errors", "UnknownNameError": "errors",
    "PluginError": "errors", "WeightsError": "errors", "LayoutError": "errors",
    "load_recipe": "recipe", "Recipe": "recipe",
}

__all__ = ["hookimpl", "__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'thawkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
