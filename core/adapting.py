"""``adapt()``: layout, head replacement, strategy phases, norm policy and the plan, in one object."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backbone import DataConfig, spec_of
from .errors import ConfigError, LayoutError
from .groups import GroupSpec, OptimConfig, build_groups, torch_param_groups
from .norm import has_running_stats, norm_modules, set_inference
from .plan import BlockRow, ParamRow, PhaseRow, Plan
from .strategy import Phase, Strategy

if TYPE_CHECKING:
    from torch import nn

    from .layout import Layout
    from .manager import ThawkitPluginManager


def _pm(pm: ThawkitPluginManager | None) -> ThawkitPluginManager:
    from .manager import default_plugin_manager

    return pm or default_plugin_manager()


def describe_layout(model: nn.Module, *, pm: ThawkitPluginManager | None = None,
                    require_head: bool = True) -> Layout:
    """The model's layout from the first plugin that knows it, checked to cover every parameter once."""
    layout = _pm(pm).hook.thawkit_describe_layout(model=model, spec=spec_of(model))
    if layout is None:
        raise LayoutError(f"no plugin could describe {type(model).__name__}")
    return layout.validate(model, require_head=require_head)


def replace_head(model: nn.Module, num_classes: int, *, dropout: float = 0.0, keep_aux: bool = False,
                 pm: ThawkitPluginManager | None = None) -> tuple[nn.Module, Layout]:
    """Replace the classifier(s) for ``num_classes`` outputs; returns the model and its new layout."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"head.num_classes must be a positive integer, got {num_classes!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"head.dropout must be in [0, 1), got {dropout!r}")
    pm = _pm(pm)
    layout = describe_layout(model, pm=pm, require_head=False)
    spec = spec_of(model)
    new = pm.hook.thawkit_replace_head(model=model, layout=layout, num_classes=num_classes,
                                       dropout=float(dropout), keep_aux=keep_aux)
    if new is None:
        raise LayoutError(f"no plugin can replace the head of {type(model).__name__} "
                          f"(classifier paths: {layout.classifiers or 'none found'})")
    if spec is not None:
        new._thawkit_spec = spec
    return new, describe_layout(new, pm=pm)


def data_config(model: nn.Module, *, pm: ThawkitPluginManager | None = None) -> DataConfig:
    """Input size, mean/std, interpolation and crop the backbone expects."""
    return _pm(pm).hook.thawkit_data_config(model=model, spec=spec_of(model))


def list_strategies(*, pm: ThawkitPluginManager | None = None) -> list[str]:
    """Names of every registered strategy."""
    return _pm(pm).strategies.names()


def list_optimizers(*, pm: ThawkitPluginManager | None = None) -> list[str]:
    return _pm(pm).optimizers.names()


def list_sources(*, pm: ThawkitPluginManager | None = None) -> list[str]:
    return _pm(pm).sources.names()


def adapt(model: nn.Module, strategy: str, *, num_classes: int | None = None, dropout: float = 0.0,
          keep_aux: bool = False, pm: ThawkitPluginManager | None = None, **params: Any) -> Adapted:
    """Replace the head (when ``num_classes`` is given) and apply a strategy picked by name.

    ``params`` are the strategy's parameters (validated by its ``Params`` model),
    plus ``norm`` = ``"frozen"`` (default), ``"affine"`` or ``"train"`` for
    normalisation layers in frozen blocks.

    Example::

        adapted = thawkit.adapt(model, "gradual", num_classes=10, every=2)
        optimizer = adapted.optimizer("adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.8)
        for epoch in range(epochs):
            adapted.on_epoch_start(epoch)
            ...
    """
    from .recipe import validate_strategy_params

    pm = _pm(pm)
    validated = validate_strategy_params(strategy, params, pm=pm)
    cls = pm.strategies.get(strategy)
    if num_classes is not None:
        model, layout = replace_head(model, num_classes, dropout=dropout, keep_aux=keep_aux, pm=pm)
    else:
        layout = describe_layout(model, pm=pm)
    adapted = Adapted(model, layout, cls(validated), pm=pm)
    pm.hook.thawkit_adapted(adapted=adapted)
    return adapted


class Adapted:
    """A model with its layout, strategy phases, norm policy and parameter groups.

    Attributes: ``model``, ``layout``, ``strategy``, ``phases`` (list of
    :class:`Phase`), ``phase`` (index of the current phase), ``epoch``.
    """

    def __init__(self, model: nn.Module, layout: Layout, strategy: Strategy, *,
                 pm: ThawkitPluginManager):
        self.model = model
        self.layout = layout
        self.strategy = strategy
        self.pm = pm
        self.norm: str = strategy.params.norm
        self.phases = self._check_phases(strategy.phases(layout, model))
        self._norms = self._norm_owners()
        self.ever_trainable = frozenset(self.phases[-1].trainable | self._affine_extra(-1))
        self.optim_config: OptimConfig | None = None
        self._groups: list[GroupSpec] | None = None
        self.epoch = 0
        self.phase = 0
        self._apply()

    # ----------------------------------------------------------- phases
    def _check_phases(self, phases: list[Phase]) -> list[Phase]:
        name = self.strategy.name
        if not phases:
            raise ConfigError(f"strategy {name!r} returned no phases")
        known = {n for n, _ in self.model.named_parameters()}
        for i, ph in enumerate(phases):
            unknown = sorted(ph.trainable - known)
            if unknown:
                raise ConfigError(f"strategy {name!r} phase {i} names parameters the model does not "
                                  f"have: {', '.join(unknown[:5])}")
            if i == 0 and ph.epoch != 0:
                raise ConfigError(f"strategy {name!r}: the first phase must start at epoch 0, "
                                  f"not {ph.epoch}")
            if i > 0:
                prev = phases[i - 1]
                if ph.epoch <= prev.epoch:
                    raise ConfigError(f"strategy {name!r}: phase {i} starts at epoch {ph.epoch}, "
                                      f"not after phase {i - 1} (epoch {prev.epoch})")
                refrozen = sorted(prev.trainable - ph.trainable)
                if refrozen:
                    raise ConfigError(f"strategy {name!r}: phase {i} re-freezes {', '.join(refrozen[:5])}"
                                      "; phases are cumulative and only thaw")
        if not phases[0].trainable and len(phases) == 1:
            raise ConfigError(f"strategy {name!r} trains no parameter at all")
        return list(phases)

    def phase_at(self, epoch: int) -> int:
        index = 0
        for i, ph in enumerate(self.phases):
            if ph.epoch <= epoch:
                index = i
        return index

    def on_epoch_start(self, epoch: int) -> bool:
        """Advance to the phase that covers ``epoch``; True when the trainable set changed."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch
        index = self.phase_at(epoch)
        if index == self.phase:
            return False
        self.phase = index
        self._apply()
        return True

    @property
    def trainable(self) -> frozenset[str]:
        """Names of the parameters that train in the current phase (norm policy included)."""
        return frozenset(self.phases[self.phase].trainable | self._affine_extra(self.phase))

    # ------------------------------------------------------------- norms
    def _norm_owners(self) -> dict[str, tuple[nn.Module, list[str]]]:
        """Norm layer path -> (module, parameter names deciding whether it is thawed)."""
        block_of = self.layout.block_of()
        all_params = list(block_of)
        out = {}
        for path, module in norm_modules(self.model).items():
            own = [f"{path}.{n}" if path else n for n, _ in module.named_parameters(recurse=False)]
            weight = [p for p in own if p.endswith("weight")] or own
            if not weight:  # no affine parameters: the block it sits in decides
                best = max(all_params, key=lambda p: _common_prefix(p, path), default=None)
                weight = [p for p in block_of if best and block_of[p] == block_of[best]]
            out[path] = (module, weight)
        return out

    def _thawed(self, index: int, deciding: list[str]) -> bool:
        return any(p in self.phases[index].trainable for p in deciding)

    def _affine_extra(self, index: int) -> frozenset[str]:
        if self.norm != "affine":
            return frozenset()
        extra = set()
        for path, (module, deciding) in self._norms.items():
            if not self._thawed(index, deciding):
                extra.update(f"{path}.{n}" if path else n for n, _ in module.named_parameters(recurse=False))
        return frozenset(extra)

    def norm_mode(self, path: str, index: int | None = None) -> str:
        """``trainable`` for norm layers in thawed blocks, else the policy (frozen/affine/train)."""
        _, deciding = self._norms[path]
        return "trainable" if self._thawed(self.phase if index is None else index, deciding) else self.norm

    # ------------------------------------------------------------- apply
    def _apply(self) -> None:
        trainable = self.trainable
        for name, p in self.model.named_parameters():
            p.requires_grad_(name in trainable)
            if name not in trainable:
                p.grad = None  # a stale zero grad would let momentum or weight decay move it
        for path, (module, _) in self._norms.items():
            fixed = self.norm_mode(path) in ("frozen", "affine") and has_running_stats(module)
            set_inference(module, fixed, self.model.training)

    # --------------------------------------------------------- optimizer
    def configure(self, name: str | None = None, **settings: Any) -> OptimConfig:
        """Set optimizer settings (``lr``, ``weight_decay``, ``layer_decay``, ``min_scale``,
        ``head_lr_mult``, ``lrs``, other keyword arguments for the optimizer)."""
        base = self.optim_config or OptimConfig()
        fields = {k: getattr(base, k) for k in ("name", "lr", "weight_decay", "layer_decay",
                                                 "min_scale", "head_lr_mult", "lrs")}
        kwargs = dict(base.kwargs)
        if name is not None:
            fields["name"] = name
        for key, value in settings.items():
            if key in fields:
                fields[key] = value
            else:
                kwargs[key] = value
        fields["lrs"] = dict(fields["lrs"] or {})
        config = OptimConfig(**fields, kwargs=kwargs)
        self._groups = build_groups(self.model, self.layout, self.ever_trainable, config, self.pm)
        self.optim_config = config
        return config

    def param_groups(self, **settings: Any) -> list[dict[str, Any]]:
        """Named torch parameter groups for your own optimizer; same settings as :meth:`optimizer`."""
        if settings or self._groups is None:
            self.configure(**settings)
        return torch_param_groups(self.model, self._groups)

    def optimizer(self, name: str = "adamw", **settings: Any):
        """A torch optimizer over every parameter that trains in any phase, in named groups.

        Settings: ``lr`` (the head's rate), ``weight_decay``, ``layer_decay`` (lr times
        decay ** distance from the head), ``min_scale``, ``head_lr_mult``, ``lrs``
        (explicit ``{block: lr}``); anything else goes to the optimizer (``momentum``, ...).
        """
        from .recipe import check_kwargs

        config = self.configure(name, **settings)
        factory = self.pm.optimizers.get(config.name, where="optimizer.name")
        check_kwargs(factory, config.kwargs, where="optimizer", what=f"optimizer {config.name!r}")
        groups = torch_param_groups(self.model, self._groups)
        return factory(groups, lr=config.lr, weight_decay=config.weight_decay, **config.kwargs)

    # -------------------------------------------------------------- plan
    @property
    def plan(self) -> Plan:
        """The per-block and per-parameter plan (groups and lrs once an optimizer is configured)."""
        block_of = self.layout.block_of()
        group_of: dict[str, GroupSpec] = {}
        for g in self._groups or []:
            group_of.update({p: g for p in g.params})
        norm_of = {}
        for path, (module, _) in self._norms.items():
            for n, _ in module.named_parameters(recurse=False):
                norm_of[f"{path}.{n}" if path else n] = path
        phase_sets = [ph.trainable | self._affine_extra(i) for i, ph in enumerate(self.phases)]
        rows = []
        for name, p in self.model.named_parameters():
            first = next((i for i, s in enumerate(phase_sets) if name in s), None)
            g = group_of.get(name)
            rows.append(ParamRow(
                name=name, block=block_of[name], shape=list(p.shape), numel=p.numel(), phase=first,
                trainable=name in phase_sets[self.phase], group=g.name if g else None,
                lr=g.lr if g else None, weight_decay=g.weight_decay if g else None,
                norm=self.norm_mode(norm_of[name]) if name in norm_of else None))
        by_name = {r.name: r for r in rows}
        blocks = []
        for b in self.layout.all_blocks:
            brows = [by_name[n] for n in b.params]
            modes = sorted({self.norm_mode(path) for path in self._norms
                            if any(block_of.get(d) == b.name for d in self._norms[path][1])})
            blocks.append(BlockRow(
                name=b.name, role=b.role, numel=sum(r.numel for r in brows),
                trainable_per_phase=[sum(r.numel for r in brows if r.name in s) for s in phase_sets],
                lrs=sorted({r.lr for r in brows if r.lr is not None}),
                weight_decays=sorted({r.weight_decay for r in brows if r.weight_decay is not None}),
                norm="/".join(modes) or None))
        phases = [PhaseRow(i, ph.epoch, ph.label, sum(by_name[n].numel for n in phase_sets[i]))
                  for i, ph in enumerate(self.phases)]
        c = self.optim_config
        optimizer = None if c is None else {
            "name": c.name, "lr": c.lr, "weight_decay": c.weight_decay, "layer_decay": c.layer_decay,
            "min_scale": c.min_scale, "head_lr_mult": c.head_lr_mult, "lrs": c.lrs, "kwargs": c.kwargs,
            "groups": [{"name": g.name, "block": g.block, "lr": g.lr, "weight_decay": g.weight_decay,
                        "params": len(g.params)} for g in self._groups]}
        plan = Plan(strategy=self.strategy.name, params=self.strategy.params.model_dump(mode="json"),
                    norm=self.norm, optimizer=optimizer, phase=self.phase, phases=phases,
                    blocks=blocks, rows=rows)
        return plan.check([n for n, _ in self.model.named_parameters()])

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Strategy, parameters, epoch and phase: enough to restore the trainable set on resume."""
        return {"strategy": self.strategy.name,
                "params": self.strategy.params.model_dump(mode="json"),
                "epoch": self.epoch, "phase": self.phase,
                "trainable": sorted(self.trainable)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("strategy") != self.strategy.name:
            raise ConfigError(f"state is for strategy {state.get('strategy')!r}, this run uses "
                              f"{self.strategy.name!r}")
        mine = self.strategy.params.model_dump(mode="json")
        if state.get("params") != mine:
            raise ConfigError(f"state was saved with strategy parameters {state.get('params')}, "
                              f"this run has {mine}")
        self.epoch = int(state["epoch"])
        self.phase = int(state["phase"])
        self._apply()
        if "trainable" in state and sorted(self.trainable) != list(state["trainable"]):
            raise ConfigError("restored phase does not give the saved trainable set; the model's "
                              "layout changed since the state was saved")

    def __repr__(self) -> str:
        return f"<Adapted {type(self.model).__name__} {self.plan.summary()}>"


def _common_prefix(param: str, path: str) -> int:
    a, b = param.split("."), path.split(".")
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
