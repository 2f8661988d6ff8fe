"""thawkit's built-in plugins: sources (torchvision, timm, python), optimizers, schedules, strategies.

Each module is registered by :func:`thawkit.get_plugin_manager` exactly like a
third-party plugin; nothing here is special-cased by the core.
"""
