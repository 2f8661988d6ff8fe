"""Parameter groups: one per block and learning rate, split into decay and no-decay.

Groups are built once over every parameter that is trainable in *any* phase,
so the optimizer's structure never changes while gradual unfreezing flips
``requires_grad``. Multipliers (layer decay, head multiplier, explicit
per-block rates) are baked into each group's ``lr``, which every
``torch.optim.lr_scheduler`` scales proportionally.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, UnknownNameError
from .norm import norm_modules

if TYPE_CHECKING:
    from torch import nn

    from .layout import Layout
    from .manager import ThawkitPluginManager


@dataclass
class OptimConfig:
    """Optimizer settings; ``lr`` is the head's base rate before multipliers."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    layer_decay: float | None = None
    min_scale: float = 0.0
    head_lr_mult: float = 1.0
    lrs: dict[str, float] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optimizer.lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"optimizer.layer_decay must be in (0, 1], got {self.layer_decay!r}")
        if not self.head_lr_mult > 0:
            raise ConfigError(f"optimizer.head_lr_mult must be > 0, got {self.head_lr_mult!r}")
        for block, lr in self.lrs.items():
            if not lr > 0:
                raise ConfigError(f"optimizer.lrs.{block} must be > 0, got {lr!r}")


@dataclass
class GroupSpec:
    """One optimizer group: its name, learning rate, weight decay and parameter names."""

    name: str
    block: str
    lr: float
    weight_decay: float
    params: list[str]


def no_decay_names(model: nn.Module, pm: ThawkitPluginManager) -> set[str]:
    """Biases, normalisation parameters, 1-D parameters and the model's ``no_weight_decay`` names."""
    patterns: set[str] = set()
    for result in pm.hook.thawkit_no_weight_decay(model=model):
        if result:
            patterns.update(result)
    norm_params = {f"{path}.{n}" if path else n
                   for path, m in norm_modules(model).items()
                   for n, _ in m.named_parameters(recurse=False)}
    out = set()
    for name, p in model.named_parameters():
        if (p.ndim <= 1 or name.endswith(".bias") or name in norm_params
                or any(fnmatch.fnmatchcase(name, pat) for pat in patterns)):
            out.add(name)
    return out


def lr_scales(model: nn.Module, layout: Layout, config: OptimConfig,
              pm: ThawkitPluginManager) -> dict[str, float]:
    names = [n for n, _ in model.named_parameters()]
    if config.layer_decay is None:
        return dict.fromkeys(names, 1.0)
    scales = pm.hook.thawkit_layer_scales(model=model, layout=layout, layer_decay=config.layer_decay,
                                          min_scale=config.min_scale)
    missing = [n for n in names if n not in scales]
    if missing:
        raise ConfigError(f"layer-decay scales miss {len(missing)} parameters "
                          f"(e.g. {', '.join(missing[:5])}); a thawkit_layer_scales plugin is incomplete")
    return scales


def build_groups(model: nn.Module, layout: Layout, trainable: Iterable[str], config: OptimConfig,
                 pm: ThawkitPluginManager) -> list[GroupSpec]:
    """Groups over ``trainable`` (every parameter that trains in any phase), each exactly once."""
    config.check()
    block_names = [b.name for b in layout.all_blocks]
    for block in config.lrs:
        if block not in block_names:
            raise UnknownNameError("block", block, block_names, where="optimizer.lrs")
    trainable = set(trainable)
    scales = lr_scales(model, layout, config, pm)
    no_decay = no_decay_names(model, pm)
    groups: dict[tuple[str, float, bool], GroupSpec] = {}
    lrs_in_block: dict[str, list[float]] = {}
    for block in layout.all_blocks:
        for name in block.params:
            if name not in trainable:
                continue
            if block.name in config.lrs:
                lr = config.lrs[block.name]
            else:
                lr = config.lr * scales[name] * (config.head_lr_mult if block.role == "head" else 1.0)
            decay = name not in no_decay
            seen = lrs_in_block.setdefault(block.name, [])
            if lr not in seen:
                seen.append(lr)
            key = (block.name, lr, decay)
            if key not in groups:
                groups[key] = GroupSpec("", block.name, lr, config.weight_decay if decay else 0.0, [])
            groups[key].params.append(name)
    for (block, lr, decay), spec in groups.items():
        many = len(lrs_in_block[block]) > 1
        spec.name = block + (f".{lrs_in_block[block].index(lr)}" if many else "") + \
            ("" if decay else ".no_decay")
    ordered = sorted(groups.values(), key=lambda g: (block_names.index(g.block),
                                                     lrs_in_block[g.block].index(g.lr),
                                                     g.name.endswith(".no_decay")))
    assigned = [p for g in ordered for p in g.params]
    if len(assigned) != len(set(assigned)) or set(assigned) != trainable:
        raise AssertionError("parameter groups do not cover the trainable parameters exactly once")
    return ordered


def torch_param_groups(model: nn.Module, specs: list[GroupSpec]) -> list[dict[str, Any]]:
    """``[{"name", "params", "lr", "weight_decay"}]`` ready for any ``torch.optim`` optimizer."""
    params = dict(model.named_parameters())
    return [{"name": s.name, "params": [params[n] for n in s.params], "lr": s.lr,
             "weight_decay": s.weight_decay} for s in specs]
