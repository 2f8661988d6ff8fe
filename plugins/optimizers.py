"""Optimizers by name: every ``torch.optim`` optimizer class, lower-cased (``adamw``, ``sgd``, ...),
that takes thawkit's parameter groups as they are (each with its own ``weight_decay``, biases
and norm parameters included). Left out, as the conformance kit found: LBFGS (needs a closure),
Muon (2-D parameters only), and Rprop and SparseAdam (no weight decay)."""
from __future__ import annotations

import inspect

from thawkit import hookimpl

#: torch.optim classes that cannot take thawkit's groups, and why
UNSUITED = {"LBFGS": "needs a closure", "Muon": "takes 2-D parameters only"}


class TorchOptimizer:
    """Factory ``(param_groups, **kwargs) -> optimizer`` for one ``torch.optim`` class."""

    def __init__(self, cls):
        self.cls = self.accepts = cls
        self.__doc__ = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else cls.__name__

    def __call__(self, param_groups, **kwargs):
        from ._builders import optimizer_errors

        with optimizer_errors(self.cls.__name__.lower(), {k: v for k, v in kwargs.items()
                                                          if k not in ("lr", "weight_decay")}):
            return self.cls(param_groups, **kwargs)


def torch_optimizer_classes() -> dict[str, type]:
    import torch

    out = {}
    for attr in dir(torch.optim):
        cls = getattr(torch.optim, attr)
        if (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)
                and cls is not torch.optim.Optimizer and attr not in UNSUITED
                and "weight_decay" in inspect.signature(cls.__init__).parameters):
            out[attr.lower()] = cls
    return out


@hookimpl
def thawkit_register_optimizers(register):
    for name, cls in torch_optimizer_classes().items():
        register(name, TorchOptimizer(cls))
