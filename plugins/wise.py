"""Deprecated: renamed :mod:`thawkit.plugins.interpolation` (``wise`` collided with
:mod:`thawkit.plugins.train.wise`). Each name here warns and resolves to the new module's."""
import thawkit

__all__ = ["check_alpha", "head_keys", "interpolate", "state_digest"]  # noqa: F822 (the names resolve through __getattr__)
__getattr__ = thawkit.moved_names(__name__, {n: f"thawkit.plugins.interpolation:{n}" for n in __all__})
