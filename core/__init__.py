"""thawkit: adapt pretrained PyTorch vision models to new tasks, correctly.

Everything public is importable from here; names load lazily so that
``thawkit --help`` never imports torch::

    import thawkit
    model = thawkit.load_backbone("torchvision:resnet18")
    adapted = thawkit.adapt(model, "last-block", num_classes=10, blocks=1)
    optimizer = adapted.optimizer("adamw", lr=1e-3, weight_decay=0.05)

Plugins, built-in ones included, import only names listed in ``__all__``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

if TYPE_CHECKING:  # the same names, visible to type checkers and IDEs
    from .adapted import Adapted
    from .api import (adapt, data_config, describe_layout, list_optimizers, list_sources,
                      list_strategies, replace_head)
    from .distributed import DistributedAdapted
    from .backbone import WEIGHT_SUFFIXES, BackboneSpec, DataConfig, arch_options, load_backbone, spec_of
    from .errors import (ConfigError, LayoutError, PluginError, ThawkitError, UnknownNameError,
                         WeightsError, closest, format_validation_error)
    from .heads import new_classifier, set_submodule
    from .layout import Block, Layout, generic_layout, last_linear, layout_from_prefixes
    from .norm import is_norm, norm_modules
    from .param_groups import GroupSpec, OptimizerSettings
    from .plan_report import Plan
    from .plugin_manager import (DEFAULT_PLUGINS, Registry, ThawkitPluginManager,
                                 default_plugin_manager, get_plugin_manager, register,
                                 reset_plugin_manager)
    from .recipe import Recipe, adapt_recipe, load_recipe, recipe_model, validate_recipe
    from .split import ForwardStep, FrozenPrefix, Split, split_sequential
    from .strategy import Phase, Strategy, StrategyParams, strategy_instance

_LAZY = {
    "Adapted": "adapted",
    **dict.fromkeys(["adapt", "data_config", "describe_layout", "list_optimizers", "list_sources",
                     "list_strategies", "replace_head"], "api"),
    **dict.fromkeys(["WEIGHT_SUFFIXES", "BackboneSpec", "DataConfig", "arch_options", "load_backbone",
                     "spec_of"], "backbone"),
    "DistributedAdapted": "distributed",
    **dict.fromkeys(["ConfigError", "LayoutError", "PluginError", "ThawkitError", "UnknownNameError",
                     "WeightsError", "closest", "format_validation_error"], "errors"),
    **dict.fromkeys(["new_classifier", "set_submodule"], "heads"),
    **dict.fromkeys(["Block", "Layout", "generic_layout", "last_linear", "layout_from_prefixes"],
                    "layout"),
    **dict.fromkeys(["is_norm", "norm_modules"], "norm"),
    **dict.fromkeys(["GroupSpec", "OptimizerSettings"], "param_groups"),
    "Plan": "plan_report",
    **dict.fromkeys(["DEFAULT_PLUGINS", "Registry", "ThawkitPluginManager", "default_plugin_manager",
                     "get_plugin_manager", "register", "reset_plugin_manager"], "plugin_manager"),
    **dict.fromkeys(["Recipe", "adapt_recipe", "load_recipe", "recipe_model", "validate_recipe"],
                    "recipe"),
    **dict.fromkeys(["ForwardStep", "FrozenPrefix", "Split", "split_sequential"], "split"),
    **dict.fromkeys(["Phase", "Strategy", "StrategyParams", "strategy_instance"], "strategy"),
}

__all__ = ["__version__", "hookimpl", "hookspec", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'thawkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
