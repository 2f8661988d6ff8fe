"""thawkit: adapt pretrained PyTorch vision models to new tasks, correctly.

Everything public is importable from here; names load lazily so that
``thawkit --help`` never imports torch::

    import thawkit
    model = thawkit.load_backbone("torchvision:resnet18")
    adapted = thawkit.adapt(model, "last-block", num_classes=10, blocks=1)
    optimizer = adapted.optimizer("adamw", lr=1e-3, weight_decay=0.05)

Plugins, built-in ones included, import only names listed in ``__all__``. A public name that
moves keeps working from its old place with a DeprecationWarning naming the new one
(``_MOVED`` and ``_MOVED_MODULES`` below, :mod:`thawkit.deprecation`; CHANGELOG.md lists moves).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .deprecation import MovedModules, resolve, warn_moved
from .hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

if TYPE_CHECKING:  # the same names, visible to type checkers and IDEs
    # `X as X`: an explicit re-export (PEP 484), since checkers cannot evaluate ``__all__`` below
    from .adapted import Adapted as Adapted
    from .api import (adapt as adapt, data_config as data_config, describe_layout as describe_layout,
                      list_optimizers as list_optimizers, list_sources as list_sources,
                      list_strategies as list_strategies, replace_head as replace_head)
    from .backbone import (WEIGHT_SUFFIXES as WEIGHT_SUFFIXES, BackboneSpec as BackboneSpec,
                           DataConfig as DataConfig, arch_options as arch_options,
                           load_backbone as load_backbone, spec_of as spec_of)
    from .building import (ForwardStep as ForwardStep, generic_layout as generic_layout,
                           last_linear as last_linear, layout_from_prefixes as layout_from_prefixes,
                           new_classifier as new_classifier, set_submodule as set_submodule,
                           split_sequential as split_sequential, stochastic as stochastic)
    from .deprecation import moved_names as moved_names
    from .errors import (ConfigError as ConfigError, LayoutError as LayoutError, PluginError as PluginError,
                         ThawkitError as ThawkitError, UnknownNameError as UnknownNameError,
                         WeightsError as WeightsError, closest as closest,
                         format_validation_error as format_validation_error, quote as quote,
                         shorten as shorten)
    from .layout import Block as Block, Layout as Layout, Split as Split
    from .norm import (has_running_stats as has_running_stats, is_norm as is_norm,
                       norm_modules as norm_modules, set_inference as set_inference)
    from .param_groups import (GroupSpec as GroupSpec, OptimizerSettings as OptimizerSettings)
    from .plan_report import Plan as Plan
    from .plugin_manager import (DEFAULT_PLUGINS as DEFAULT_PLUGINS, Registry as Registry,
                                 ThawkitPluginManager as ThawkitPluginManager,
                                 default_plugin_manager as default_plugin_manager,
                                 get_plugin_manager as get_plugin_manager, register as register,
                                 reset_plugin_manager as reset_plugin_manager)
    from .recipe import (Recipe as Recipe, adapt_recipe as adapt_recipe, load_recipe as load_recipe,
                         recipe_model as recipe_model, validate_recipe as validate_recipe)
    from .strategy import (Phase as Phase, Strategy as Strategy, StrategyParams as StrategyParams,
                           strategy_instance as strategy_instance)

_LAZY = {
    "Adapted": "adapted",
    **dict.fromkeys(["adapt", "data_config", "describe_layout", "list_optimizers", "list_sources",
                     "list_strategies", "replace_head"], "api"),
    **dict.fromkeys(["WEIGHT_SUFFIXES", "BackboneSpec", "DataConfig", "arch_options", "load_backbone",
                     "spec_of"], "backbone"),
    **dict.fromkeys(["ForwardStep", "generic_layout", "last_linear", "layout_from_prefixes",
                     "new_classifier", "set_submodule", "split_sequential", "stochastic"], "building"),
    "moved_names": "deprecation",
    **dict.fromkeys(["ConfigError", "LayoutError", "PluginError", "ThawkitError", "UnknownNameError",
                     "WeightsError", "closest", "format_validation_error", "quote", "shorten"], "errors"),
    **dict.fromkeys(["Block", "Layout", "Split"], "layout"),
    **dict.fromkeys(["has_running_stats", "is_norm", "norm_modules", "set_inference"], "norm"),
    **dict.fromkeys(["GroupSpec", "OptimizerSettings"], "param_groups"),
    "Plan": "plan_report",
    **dict.fromkeys(["DEFAULT_PLUGINS", "Registry", "ThawkitPluginManager", "default_plugin_manager",
                     "get_plugin_manager", "register", "reset_plugin_manager"], "plugin_manager"),
    **dict.fromkeys(["Recipe", "adapt_recipe", "load_recipe", "recipe_model", "validate_recipe"],
                    "recipe"),
    **dict.fromkeys(["Phase", "Strategy", "StrategyParams", "strategy_instance"], "strategy"),
}

__all__ = ["__version__", "hookimpl", "hookspec", *sorted(_LAZY)]

#: Public names that moved out of ``thawkit`` (old name -> "module:attribute"): each use warns.
_MOVED = {
    "DistributedAdapted": "thawkit.plugins.distributed:DistributedAdapted",
    "FrozenPrefix": "thawkit.plugins.split:FrozenPrefix",
    "WeightsReport": "thawkit.plugins.weights:WeightsReport",
    "apply_weights": "thawkit.plugins.weights:apply_weights",
    "read_weights": "thawkit.plugins.weights:read_weights",
    "recipe_json_schema": "thawkit.plugins.inspection:recipe_json_schema",
}

#: Modules that moved (old -> new): ``import thawkit.cli`` still works, and warns.
_MOVED_MODULES = {
    "thawkit.cli": "thawkit.plugins.cli",
    "thawkit.distributed": "thawkit.plugins.distributed",
    "thawkit.fallbacks": "thawkit.plugins.fallbacks",
    "thawkit.heads": "thawkit.building",
    "thawkit.split": "thawkit.plugins.split",
}
MovedModules(_MOVED_MODULES).install()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if name not in _MOVED:
            raise AttributeError(f"module 'thawkit' has no attribute {name!r}")
        warn_moved(f"thawkit.{name}", _MOVED[name])
        return resolve(_MOVED[name])
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
