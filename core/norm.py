"""Normalisation layers in frozen blocks: what "frozen" means for running statistics.

``requires_grad = False`` does not stop BatchNorm from updating its running
statistics in train mode, and ``module.eval()`` is undone by the parent's
``model.train()``. thawkit instead installs a forward pre-hook on each norm
layer that must keep inference behaviour, which switches that layer to eval
mode right before every forward pass, so the policy survives any number of
``model.train()`` calls. Hooks are plain functions (deepcopy and pickle work)
and are removed when a block thaws.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


def is_norm(module: nn.Module) -> bool:
    """BatchNorm/InstanceNorm/GroupNorm/LayerNorm/RMSNorm and custom ``*Norm*`` leaf layers."""
    from torch import nn

    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
                           nn.LocalResponseNorm)):
        return True
    rms = getattr(nn, "RMSNorm", None)
    if rms is not None and isinstance(module, rms):
        return True
    name = type(module).__name__.lower()
    # custom norms (timm RmsNorm, FrozenBatchNorm2d, ...) own their parameters directly
    return "norm" in name and all("." not in n for n, _ in module.named_parameters())


def norm_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {path: m for path, m in model.named_modules() if is_norm(m)}


def _force_eval(module: nn.Module, args: tuple[Any, ...]) -> None:
    module.training = False


def set_inference(module: nn.Module, on: bool, model_training: bool) -> None:
    """Keep ``module`` in inference mode under ``model.train()`` (on), or release it to follow
    the model's mode again (off). The norm policy uses it for frozen norm layers; a plugin may use
    it for other layers (the transformers plugin: dropout in frozen layers)."""
    hooks = module._forward_pre_hooks
    for key in [k for k, h in hooks.items() if h is _force_eval]:
        del hooks[key]
    if on:
        module.register_forward_pre_hook(_force_eval)
        module.training = False
    else:
        module.training = model_training


def has_running_stats(module: nn.Module) -> bool:
    return getattr(module, "running_mean", None) is not None or \
        getattr(module, "running_var", None) is not None
