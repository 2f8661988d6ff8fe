"""Optimizers by name: every ``torch.optim`` optimizer class, lower-cased (``adamw``, ``sgd``, ...)."""
from __future__ import annotations

from thawkit import hookimpl


class TorchOptimizer:
    """Factory ``(param_groups, **kwargs) -> optimizer`` for one ``torch.optim`` class."""

    def __init__(self, cls):
        self.cls = self.accepts = cls
        self.__doc__ = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else cls.__name__

    def __call__(self, param_groups, **kwargs):
        return self.cls(param_groups, **kwargs)


def torch_optimizer_classes() -> dict[str, type]:
    import torch

    out = {}
    for attr in dir(torch.optim):
        cls = getattr(torch.optim, attr)
        if (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)
                and cls is not torch.optim.Optimizer and attr != "LBFGS"):  # LBFGS needs a closure
            out[attr.lower()] = cls
    return out


@hookimpl
def thawkit_register_optimizers(register):
    for name, cls in torch_optimizer_classes().items():
        register(name, TorchOptimizer(cls))
