"""Deprecated: renamed :mod:`thawkit.plugins.inspection` (``commands`` collided with
:mod:`thawkit.plugins.train.commands`). Each name here warns and resolves to the new module's."""
from ._deprecation import module_alias

__all__ = [  # noqa: F822 (the names resolve through __getattr__)
    "PLAN_STEPS", "cmd_describe", "cmd_models", "cmd_optimizers", "cmd_plan", "cmd_plugins",
    "cmd_schema", "cmd_strategies", "plugin_info", "recipe_json_schema", "thawkit_register_commands"]
__getattr__ = module_alias(__name__, "thawkit.plugins.inspection", __all__)
