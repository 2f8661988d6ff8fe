"""Source ``python:<module>:<callable>``: a user's own model factory, described by the generic layout.

``thawkit.load_backbone("python:my_pkg.models:build_net", width=64)`` imports
``my_pkg.models`` and calls ``build_net(width=64)``. A ``weights`` option names
a local weights file loaded safely after construction; ``device="meta"``
builds on the meta device.
"""
from __future__ import annotations

import contextlib
import importlib

from thawkit import ConfigError, hookimpl, shorten


class PythonSource:
    description = "your own factory: python:package.module:callable"

    def load(self, name: str, options: dict):
        import torch

        from ._builders import builder_errors
        from thawkit import last_linear
        from .weights import apply_weights, read_weights

        module_name, sep, attr = name.rpartition(":")
        if not sep or not module_name or not attr:
            raise ConfigError(f"python source needs python:MODULE:CALLABLE, got python:{name}")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - the user's module: ImportError, SyntaxError, ...
            raise ConfigError(f"python:{name}: cannot import module {module_name!r}: "
                              f"{type(exc).__name__}: {shorten(str(exc))}") from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ConfigError(f"python:{name}: module {module_name!r} has no callable {attr!r}")
        options = dict(options)
        weights = options.pop("weights", None)
        device = options.pop("device", None)
        with builder_errors(f"python:{name}", options, what="factory"), \
                torch.device(device) if device is not None else contextlib.nullcontext():
            model = factory(**options)
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"python:{name} returned {type(model).__name__}, not an nn.Module")
        if weights is not None:
            # the generic layout's classifier (a source is not handed the plugin manager, so
            # it must not consult the shared one behind the caller's back)
            head = last_linear(model)
            apply_weights(model, read_weights(weights), file=str(weights),
                          head_prefixes=[head] if head else [])
        return model

    def list_models(self, pattern: str | None = None) -> list[str]:
        return []


@hookimpl
def thawkit_register_sources(register):
    register("python", PythonSource())
