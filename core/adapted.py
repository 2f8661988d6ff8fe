"""The :class:`Adapted` model: layout, strategy phases, norm and dropout policies, parameter groups
and plan."""
from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .deprecation import resolve, warn_moved
from .errors import ConfigError, PluginError
from .norm import has_running_stats, is_norm, norm_modules, set_inference
from .param_groups import GroupSpec, OptimizerSettings, build_groups, torch_param_groups
from .plan_report import BlockRow, ParamRow, PhaseRow, Plan
from .strategy import Phase, Strategy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .layout import Layout
    from .plugin_manager import ThawkitPluginManager


class Adapted:
    """A model with its layout, strategy phases, norm and dropout policies and parameter groups.

    Attributes: ``model``, ``layout``, ``strategy``, ``phases`` (list of
    :class:`Phase`), ``phase`` (index of the current phase), ``epoch``, and the strategy's
    policies ``norm`` and ``frozen_dropout`` (:class:`~thawkit.StrategyParams`).
    """

    def __init__(self, model: nn.Module, layout: Layout, strategy: Strategy, *,
                 pm: ThawkitPluginManager) -> None:
        self.model = model
        self.layout = layout
        self.strategy = strategy
        self.pm = pm
        self.norm: str = strategy.params.norm
        # a plugin's Params written before the field existed, outside StrategyParams, keeps the default
        self.frozen_dropout: str = getattr(strategy.params, "frozen_dropout", "keep")
        entry = pm.strategies.entry(strategy.name) if strategy.name in pm.strategies else None
        self._owner = entry.plugin if entry is not None and entry.obj is type(strategy) else None
        with pm.guard(self._owner, f"strategy {strategy.name!r}: phases()"):
            phases = strategy.phases(layout, model)
        self.phases = self._check_phases(phases)
        self._norms = self._norm_owners()
        self._held: frozenset[str] = frozenset()
        self.ever_trainable = self.trainable_in(-1)
        self.optimizer_settings: OptimizerSettings | None = None
        self._groups: list[GroupSpec] | None = None
        self.epoch = 0
        self.phase = 0
        self._apply()

    # ----------------------------------------------------------- phases
    def _check_phases(self, phases: list[Phase]) -> list[Phase]:
        """The contract of :class:`Strategy`; a breach is a :class:`PluginError` naming the plugin."""
        def fail(problem: str) -> PluginError:
            who = self.pm.describe_plugin(self._owner)
            return PluginError(f"{who}: strategy {self.strategy.name!r} {problem}")

        if not isinstance(phases, list) or not phases or not all(isinstance(p, Phase) for p in phases):
            raise fail(f"phases() returned {phases!r}; it must return a non-empty list of thawkit.Phase")
        known = {n for n, _ in self.model.named_parameters()}
        for i, ph in enumerate(phases):
            prev = phases[i - 1] if i else None
            unknown = sorted(ph.trainable - known)
            refrozen = sorted(prev.trainable - ph.trainable) if prev else []
            frozen_head = sorted(set(self.layout.head.params) - ph.trainable)
            if unknown:
                raise fail(f"phase {i} names parameters the model does not have: {', '.join(unknown[:5])}")
            if (ph.epoch != 0) if prev is None else (ph.epoch <= prev.epoch):
                raise fail(f"phase {i} starts at epoch {ph.epoch}; the first phase starts at epoch 0, "
                           "each later one after the one before")
            if refrozen:
                raise fail(f"phase {i} re-freezes {', '.join(refrozen[:5])}; phases are cumulative")
            if frozen_head:
                raise fail(f"phase {i} (epoch {ph.epoch}) leaves the head frozen ("
                           f"{', '.join(frozen_head[:5])}); the head always trains: every phase must "
                           "include layout.head.params")
        return list(phases)

    def phase_at(self, epoch: int) -> int:
        return max((i for i, ph in enumerate(self.phases) if ph.epoch <= epoch), default=0)

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
        return self.trainable_in(self.phase)

    def trainable_in(self, phase: int) -> frozenset[str]:
        """Names of the parameters that train in phase ``phase`` (norm policy included)."""
        return frozenset(self.phases[phase].trainable | self._affine_extra(phase))

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
        extra: set[str] = set()
        for path, (module, deciding) in self._norms.items():
            if not self._thawed(index, deciding):
                extra.update(f"{path}.{n}" if path else n for n, _ in module.named_parameters(recurse=False))
        return frozenset(extra)

    def norm_mode(self, path: str, index: int | None = None) -> str:
        """``trainable`` for norm layers in thawed blocks, else the policy (frozen/affine/train)."""
        _, deciding = self._norms[path]
        return "trainable" if self._thawed(self.phase if index is None else index, deciding) else self.norm

    # ----------------------------------------------------------- dropout
    @cached_property
    def _placed(self) -> dict[str, tuple[nn.Module, str]]:
        """:meth:`_module_blocks`, worked out the first time ``frozen_dropout: off`` needs it."""
        return self._module_blocks()

    def _module_blocks(self) -> dict[str, tuple[nn.Module, str]]:
        """Module path -> (module, block) for every module other than a norm layer (and the root)
        that lies wholly inside one block: a module with parameters where they all are; one
        without, in the block whose ``modules`` list it, else where its parent lies."""
        block_of = self.layout.block_of()
        block_by_id = {id(p): block_of[n] for n, p in self.model.named_parameters()}
        listed = sorted(((m, b.name) for b in self.layout.all_blocks for m in b.modules if m),
                        key=lambda item: -len(item[0]))
        owner: dict[str, str | None] = {}
        out = {}
        for path, module in self.model.named_modules():
            found = {block_by_id[id(p)] for p in module.parameters()}
            if found:
                owner[path] = found.pop() if len(found) == 1 else None
            else:
                owner[path] = next((b for m, b in listed if path == m or path.startswith(m + ".")),
                                   owner.get(path.rpartition(".")[0]) if path else None)
            block = owner[path]
            if path and block is not None and not is_norm(module):
                out[path] = (module, block)
        return out

    def inference_modules(self, phase: int | None = None) -> dict[str, nn.Module]:
        """The modules that ``frozen_dropout: off`` keeps in inference mode in ``phase`` (default:
        the current one), by path: every module, norm layers excepted, of each block none of
        whose parameters the phase trains. Empty under ``frozen_dropout: keep``."""
        if self.frozen_dropout != "off":
            return {}
        own = self.phases[self.phase if phase is None else phase].trainable
        frozen = {b.name for b in self.layout.all_blocks if b.params and not any(p in own for p in b.params)}
        return {path: module for path, (module, block) in self._placed.items() if block in frozen}

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
        held = frozenset(self.inference_modules())
        for path in held | self._held:  # under keep nothing is touched: the user's modes stand
            set_inference(self._placed[path][0], path in held, self.model.training)
        self._held = held

    # --------------------------------------------------------- optimizer
    def param_groups(self, settings: str | OptimizerSettings = "adamw",
                     **kwargs: Any) -> list[dict[str, Any]]:
        """Named torch parameter groups over every parameter that trains in any phase.

        Takes the same settings as :meth:`optimizer` (for your own optimizer class). Each
        call is built from its own arguments and the documented defaults only; the plan
        shows the groups of the latest call.
        """
        config = OptimizerSettings.of(settings, **kwargs)
        with self.pm.guard(self._owner, f"strategy {self.strategy.name!r}: lr_scales(), group_of()"):
            scales = self.strategy.lr_scales(self.layout, self.model)
            tags = {name: self.strategy.group_of(name) for name in self.ever_trainable}
        self._groups = build_groups(self.model, self.layout, self.ever_trainable, config, self.pm,
                                    scales, tag_of=tags.__getitem__)
        self.optimizer_settings = config
        return torch_param_groups(self.model, self._groups, config.lr if config.lr_scale else None)

    def optimizer(self, settings: str | OptimizerSettings = "adamw",
                  **kwargs: Any) -> torch.optim.Optimizer:
        """A torch optimizer over every parameter that trains in any phase, in named groups.

        ``settings`` is an optimizer name (``thawkit optimizers`` lists them) or validated
        :class:`~thawkit.OptimizerSettings` (a recipe's ``optimizer`` section). Keyword
        arguments: ``lr`` (the head's rate), ``weight_decay`` (default 0.01, weights only),
        ``layer_decay`` (lr times decay ** distance from the head), ``min_scale``,
        ``head_lr_mult``, ``lrs`` (explicit ``{block: lr}``), ``lr_scale`` (timm's form: each
        group's ``lr`` is ``lr`` and its multiplier is in ``lr_scale``, for a loop or timm
        scheduler that sets ``lr * lr_scale``); anything else goes to the
        optimizer (``momentum``, ``betas``, ...). Frozen parameters are in the groups too
        (with ``requires_grad=False``), so the optimizer never changes shape while phases thaw.
        """
        config = OptimizerSettings.of(settings, **kwargs)
        factory = self.pm.optimizers.get(config.name, where="optimizer.name")
        config.check_against(factory)
        groups = self.param_groups(config)
        with self.pm.guard(self.pm.optimizers.entry(config.name).plugin, f"optimizer {config.name!r}"):
            optimizer: torch.optim.Optimizer = factory(groups, lr=config.lr,
                                                       weight_decay=config.weight_decay, **config.kwargs)
        return optimizer

    def frozen_prefix(self, phase: int | None = None) -> Any:
        """Deprecated: ``thawkit.plugins.split.frozen_prefix(adapted, phase)`` (it moved there)."""
        warn_moved("thawkit.Adapted.frozen_prefix", "thawkit.plugins.split:frozen_prefix")
        return resolve("thawkit.plugins.split:frozen_prefix")(self, phase)

    # -------------------------------------------------------------- plan
    @property
    def plan(self) -> Plan:
        """The per-block and per-parameter plan (groups and lrs once an optimizer is configured)."""
        block_of = self.layout.block_of()
        group_of: dict[str, GroupSpec] = {}
        for group in self._groups or []:
            group_of.update({p: group for p in group.params})
        norm_of = {f"{path}.{n}" if path else n: path for path, (module, _) in self._norms.items()
                   for n, _ in module.named_parameters(recurse=False)}
        phase_sets = [self.trainable_in(i) for i in range(len(self.phases))]
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
        c = self.optimizer_settings
        optimizer = None if c is None or self._groups is None else {
            "name": c.name, "lr": c.lr, "weight_decay": c.weight_decay, "layer_decay": c.layer_decay,
            "min_scale": c.min_scale, "head_lr_mult": c.head_lr_mult, "lrs": c.lrs, "kwargs": c.kwargs,
            "groups": [{"name": g.name, "block": g.block, "lr": g.lr, "weight_decay": g.weight_decay,
                        "params": len(g.params)} for g in self._groups]}
        with self.pm.guard(self._owner, f"strategy {self.strategy.name!r}: describe()"):
            notes, details = self.strategy.describe(self.model)
        plan = Plan(strategy=self.strategy.name, params=self.strategy.params.model_dump(mode="json"),
                    norm=self.norm, optimizer=optimizer, phase=self.phase, phases=phases,
                    blocks=blocks, rows=rows, notes=[*self.layout.notes, *notes], details=details,
                    frozen_dropout=self.frozen_dropout)
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
        saved = state.get("params")
        try:  # a state saved before a field existed holds its default
            saved = type(self.strategy.params).model_validate(saved).model_dump(mode="json")
        except ValidationError:
            pass
        if saved != mine:
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
