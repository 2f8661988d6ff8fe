"""Parameter groups: one per block and learning rate, split into decay and no-decay.

Groups are built once over every parameter that is trainable in *any* phase,
so the optimizer's structure never changes while gradual unfreezing flips
``requires_grad``. Multipliers (layer decay, head multiplier, explicit
per-block rates) are baked into each group's ``lr``, which every
``torch.optim.lr_scheduler`` scales proportionally; with ``lr_scale`` they go to each
group's ``lr_scale`` instead, for loops that follow timm (``lr = base * lr_scale``).
"""
from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError, UnknownNameError, closest, format_validation_error
from .norm import norm_modules

if TYPE_CHECKING:
    from torch import nn

    from .layout import Layout
    from .plugin_manager import ThawkitPluginManager


class OptimizerSettings(BaseModel):
    """Optimizer settings: the recipe's ``optimizer`` section and what :meth:`Adapted.optimizer`
    takes, validated once.

    ``lr`` is the head's base rate before multipliers. ``weight_decay`` defaults to 0.01
    for every optimizer (torch's AdamW default; torch's SGD default is 0): it applies to
    weights only, never to biases, norm parameters or a model's ``no_weight_decay`` names.
    Fields other than those below (``momentum``, ``betas``, ...) go to the optimizer.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str = Field("adamw", description="Optimizer name; `thawkit optimizers` lists them.")
    lr: float = Field(1e-3, gt=0, description="Learning rate of the head (before head_lr_mult).")
    weight_decay: float = Field(0.01, ge=0, description="Weight decay of weights (not biases, "
                                "norms or no_weight_decay names).")
    layer_decay: float | None = Field(None, gt=0, le=1, description="Layer-wise LR decay factor.")
    min_scale: float = Field(0.0, ge=0, description="Lower bound on layer-decay scales.")
    head_lr_mult: float = Field(1.0, gt=0, description="Multiplier on the head's learning rate.")
    lrs: dict[str, float] = Field(default_factory=dict, description="Explicit lr per block name.")
    lr_scale: bool = Field(False, description="timm's form: every group's lr is the base lr and its "
                           "multiplier is in lr_scale, for loops that set lr = base * lr_scale.")

    @field_validator("lrs")
    @classmethod
    def _positive_lrs(cls, lrs: dict[str, float]) -> dict[str, float]:
        bad = [f"{block}={lr!r}" for block, lr in lrs.items() if not 0 < lr < float("inf")]
        if bad:
            raise ValueError(f"every block's lr must be a finite number > 0, got {', '.join(bad)}")
        return lrs

    @property
    def kwargs(self) -> dict[str, Any]:
        """Extra optimizer arguments (momentum, betas, ...), checked against the optimizer."""
        return dict(self.model_extra or {})

    @classmethod
    def of(cls, name: str | OptimizerSettings = "adamw", **settings: Any) -> OptimizerSettings:
        """Settings from a name and keyword arguments (or validated settings, passed through)."""
        if isinstance(name, OptimizerSettings):
            return name.model_copy(update=settings) if settings else name
        try:
            return cls.model_validate({"name": name, **settings})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, where="optimizer", prefix=("optimizer",),
                                                      model=cls)) from None

    def check_against(self, factory: Any, *, where: str = "optimizer") -> None:
        """Reject keyword arguments the optimizer factory (or the class it wraps) does not take."""
        kwargs = self.kwargs
        if not kwargs:
            return
        target = getattr(factory, "accepts", None) or factory
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            return
        params = sig.parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        own = list(type(self).model_fields)
        allowed = own + [n for n, p in params.items()
                         if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                         and n not in ("self", "params", "param_groups", "lr", "weight_decay")
                         and n not in own]
        bad = [k for k in kwargs if k not in params]
        if bad:
            hint = closest(bad[0], allowed)
            guess = f"did you mean {', '.join(repr(h) for h in hint)}? " if hint else ""
            raise ConfigError(f"{where}.{bad[0]}: not a field of the optimizer section nor a "
                              f"parameter of optimizer {self.name!r}; {guess}allowed: "
                              f"{', '.join(allowed)}")


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


def lr_scales(model: nn.Module, layout: Layout, config: OptimizerSettings,
              pm: ThawkitPluginManager) -> dict[str, float]:
    names = [n for n, _ in model.named_parameters()]
    if config.layer_decay is None:
        return dict.fromkeys(names, 1.0)
    scales: dict[str, float] = pm.hook.thawkit_layer_scales(
        model=model, layout=layout, layer_decay=config.layer_decay, min_scale=config.min_scale)
    missing = [n for n in names if n not in scales]
    if missing:
        raise ConfigError(f"layer-decay scales miss {len(missing)} parameters "
                          f"(e.g. {', '.join(missing[:5])}); a thawkit_layer_scales plugin is incomplete")
    return scales


def build_groups(model: nn.Module, layout: Layout, trainable: Iterable[str], config: OptimizerSettings,
                 pm: ThawkitPluginManager, extra: dict[str, float] | None = None,
                 tag_of: Callable[[str], str | None] = lambda name: None) -> list[GroupSpec]:
    """Groups over ``trainable`` (every parameter that trains in any phase), each exactly once;
    ``extra``: a strategy's own lr factors by parameter name (:meth:`Strategy.lr_scales`);
    ``tag_of(name)`` puts a parameter in a group of its own in its block (``layer4.lora``)."""
    block_names = [b.name for b in layout.all_blocks]
    for block_name in config.lrs:
        if block_name not in block_names:
            raise UnknownNameError("block", block_name, block_names, where="optimizer.lrs")
    trainable = set(trainable)
    scales = lr_scales(model, layout, config, pm)
    no_decay = no_decay_names(model, pm)
    groups: dict[tuple[str, float, bool, str | None], GroupSpec] = {}
    lrs_in_block: dict[str, list[float]] = {}
    for block in layout.all_blocks:
        for name in block.params:
            if name not in trainable:
                continue
            if block.name in config.lrs:
                lr = config.lrs[block.name]
            else:
                lr = config.lr * scales[name] * (extra or {}).get(name, 1.0) * \
                    (config.head_lr_mult if block.role == "head" else 1.0)
            decay = name not in no_decay
            seen = lrs_in_block.setdefault(block.name, [])
            if lr not in seen:
                seen.append(lr)
            key = (block.name, lr, decay, tag_of(name))
            if key not in groups:
                groups[key] = GroupSpec("", block.name, lr, config.weight_decay if decay else 0.0, [])
            groups[key].params.append(name)
    for (block_name, lr, decay, tag), spec in groups.items():
        many = len(lrs_in_block[block_name]) > 1
        spec.name = block_name + (f".{lrs_in_block[block_name].index(lr)}" if many else "") + \
            (f".{tag}" if tag else "") + ("" if decay else ".no_decay")
    ordered = sorted(groups.values(), key=lambda g: (block_names.index(g.block),
                                                     lrs_in_block[g.block].index(g.lr),
                                                     g.name.endswith(".no_decay")))
    assigned = [p for g in ordered for p in g.params]
    if len(assigned) != len(set(assigned)) or set(assigned) != trainable:
        raise AssertionError("parameter groups do not cover the trainable parameters exactly once")
    return ordered


def torch_param_groups(model: nn.Module, specs: list[GroupSpec],
                       base_lr: float | None = None) -> list[dict[str, Any]]:
    """``[{"name", "params", "lr", "weight_decay"}]`` ready for any ``torch.optim`` optimizer;
    with ``base_lr`` (timm's form) ``lr`` is ``base_lr`` and ``lr_scale`` the group's multiplier."""
    params = dict(model.named_parameters())
    return [{"name": s.name, "params": [params[n] for n in s.params], "weight_decay": s.weight_decay,
             **({"lr": s.lr} if base_lr is None else {"lr": base_lr, "lr_scale": s.lr / base_lr})}
            for s in specs]
