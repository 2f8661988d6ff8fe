"""Deprecated: renamed :mod:`thawkit.plugins.interpolation` (``wise`` collided with
:mod:`thawkit.plugins.train.wise`). Each name here warns and resolves to the new module's."""
from ._deprecation import module_alias

__all__ = ["check_alpha", "head_keys", "interpolate", "state_digest"]  # noqa: F822 (the names resolve through __getattr__)
__getattr__ = module_alias(__name__, "thawkit.plugins.interpolation", __all__)
