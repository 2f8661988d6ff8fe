"""PyTorch Lightning: the :class:`ThawkitFinetuning` callback and the :func:`configure_optimizers` helper.

Needs the extra ``thawkit[lightning]`` (``lightning``, and ``jsonargparse`` for ``LightningCLI``).
A whole Lightning integration is the callback plus one call::

    from thawkit.plugins.lightning import ThawkitFinetuning, configure_optimizers

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = thawkit.load_backbone("torchvision:resnet18")   # adapted by the callback

        def configure_optimizers(self):
            return configure_optimizers(self, "sgd", lr=0.01, momentum=0.9, schedule="cosine")
        ...

    trainer = L.Trainer(callbacks=[ThawkitFinetuning("gradual", num_classes=10, every=2)])

The callback owns the head, the freezing, the phases and the norm policy; Lightning owns the
loop, devices, checkpoints and processes. Its state (strategy, phase, trainable set) travels in
every Lightning checkpoint, so a resume from any checkpoint, also one saved in the middle of an
epoch, trains the parameters it trained when the checkpoint was saved.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError as exc:  # pragma: no cover - exercised by a test in a process without lightning
    raise ImportError(
        "thawkit.plugins.lightning needs PyTorch Lightning, which is not installed: "
        "pip install 'thawkit[lightning]'") from exc

import thawkit
from thawkit import ConfigError

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from thawkit import Adapted, OptimizerSettings, ThawkitPluginManager

__all__ = ["ThawkitFinetuning", "configure_optimizers"]


class ThawkitFinetuning(Callback):
    """Freeze, replace the head and thaw by phases, as a Lightning callback.

    Args:
        strategy: a strategy name (``thawkit strategies`` lists them) with its parameters as
            keyword arguments, or a recipe's ``strategy`` section as a mapping
            (``{"name": "gradual", "every": 2}``).
        num_classes: outputs of the new head; ``None`` keeps the model's classifier.
        dropout: dropout before the new classifier.
        keep_aux: keep (and replace) googlenet's and inception's auxiliary heads.
        optimizer: what :func:`configure_optimizers` builds when it is called without settings:
            an optimizer name, or a recipe's ``optimizer`` section as a mapping
            (``{"name": "sgd", "lr": 0.1, "momentum": 0.9, "layer_decay": 0.7}``).
        schedule: the learning-rate schedule of :func:`configure_optimizers`: a name
            (``cosine``, ``step``, ``onecycle``, ``plateau``, ...) or a recipe's ``schedule``
            section as a mapping (``{"name": "cosine", "warmup_epochs": 1}``).
        attribute: the attribute of the ``LightningModule`` that holds the model (``model``).
        log: log ``thawkit/phase`` and ``thawkit/trainable_params`` at every epoch start.
        pm: the plugin manager (default: the shared one).
        **params: the strategy's parameters (``every``, ``blocks``, ``norm``, ...).

    In ``setup`` the callback adapts ``getattr(pl_module, attribute)`` (new head, frozen
    parameters, norm policy) and puts the adapted model back on that attribute, before Lightning
    loads a checkpoint's weights, wraps the model for DDP or builds the optimizer. Every value is
    checked when the callback is built, so a bad configuration fails before training starts.
    """

    def __init__(self, strategy: str | dict[str, Any] = "gradual", *, num_classes: int | None = None,
                 dropout: float = 0.0, keep_aux: bool = False,
                 optimizer: str | dict[str, Any] | None = None,
                 schedule: str | dict[str, Any] | None = None,
                 attribute: str = "model", log: bool = True, pm: Any = None, **params: Any) -> None:
        super().__init__()
        self.pm: ThawkitPluginManager = pm or thawkit.default_plugin_manager()
        name, params = _name_and_params(strategy, "strategy", "ThawkitFinetuning", params)
        self.strategy = thawkit.strategy_instance(name, params, pm=self.pm,
                                                  where="ThawkitFinetuning")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ConfigError(f"ThawkitFinetuning(num_classes=...): a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.dropout = float(dropout)
        self.keep_aux = keep_aux
        self.optimizer: OptimizerSettings | None = (
            None if optimizer is None else _optimizer_settings(optimizer, self.pm, "ThawkitFinetuning"))
        self.schedule = None if schedule is None else _schedule_section(schedule, self.pm,
                                                                        "ThawkitFinetuning")
        self.attribute = attribute
        self.log = log
        self.adapted: Adapted | None = None
        self._wrapped: frozenset[str] | None = None  # the trainable set the DDP wrapper registered

    @classmethod
    def from_adapted(cls, adapted: Adapted, *, attribute: str = "model", optimizer: Any = None,
                     schedule: Any = None, log: bool = True) -> ThawkitFinetuning:
        """A callback around a model you adapted yourself (``self.model = adapted.model``)."""
        callback = cls(adapted.strategy.name, optimizer=optimizer, schedule=schedule, attribute=attribute,
                       log=log, pm=adapted.pm, **adapted.strategy.params.model_dump())
        callback.adapted = adapted
        return callback

    @classmethod
    def from_recipe(cls, recipe: Any, *, attribute: str = "model", log: bool = True) -> ThawkitFinetuning:
        """A callback from a recipe (a path or a :class:`~thawkit.Recipe`): its ``strategy``,
        ``head``, ``optimizer`` and ``schedule`` sections (``backbone``, ``data`` and ``train`` are
        the host's: the model is the ``LightningModule``'s, the loop is Lightning's)."""
        if not isinstance(recipe, thawkit.Recipe):
            recipe = thawkit.load_recipe(recipe)
        schedule = getattr(recipe, "schedule", None)
        return cls(recipe.strategy.name, num_classes=recipe.head.num_classes, dropout=recipe.head.dropout,
                   keep_aux=recipe.head.keep_aux, optimizer=recipe.optimizer.model_dump(),
                   schedule=None if schedule is None else schedule.model_dump(), attribute=attribute,
                   log=log, pm=recipe.plugin_manager, **recipe.strategy.params)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        model = getattr(pl_module, self.attribute, None)
        if model is None:
            raise ConfigError(
                f"ThawkitFinetuning: {type(pl_module).__name__} has no attribute {self.attribute!r} "
                "when setup() runs; build the model in __init__ (self.model = thawkit.load_backbone(...)) "
                "or name its attribute: ThawkitFinetuning(..., attribute='net')")
        if self.adapted is not None:
            if model is not self.adapted.model:
                raise ConfigError(
                    f"ThawkitFinetuning: {type(pl_module).__name__}.{self.attribute} is not the model this "
                    "callback adapted; give each LightningModule its own callback")
            return
        launches = _launches_processes(trainer)
        if self.num_classes is not None and launches:
            raise ConfigError(
                f"ThawkitFinetuning(num_classes={self.num_classes}) under a Trainer strategy that starts "
                "its processes itself (ddp_spawn, ddp_fork, ddp_notebook): Lightning loads the trained "
                "weights back into the main process's module, whose head only these processes replace. "
                "Use strategy='ddp', or replace the head in __init__ (thawkit.replace_head) and leave "
                "num_classes out")
        names = set(model.state_dict()) if launches else None
        self.adapted = thawkit.adapt(model, self.strategy, num_classes=self.num_classes,
                                     dropout=self.dropout, keep_aux=self.keep_aux, pm=self.pm)
        if names is not None and set(self.adapted.model.state_dict()) != names:
            # Lightning loads rank 0's weights back with strict=False: layers the strategy added
            # (adapters) are not in the main process's module, and their training would be dropped
            added = sorted(set(self.adapted.model.state_dict()) - names,
                           key=lambda n: (n not in self.adapted.trainable, n))  # trained ones first
            raise ConfigError(
                f"ThawkitFinetuning({self.strategy.name!r}) under a Trainer strategy that starts its "
                "processes itself (ddp_spawn, ddp_fork, ddp_notebook): the strategy adds layers to the "
                f"model ({', '.join(added[:2])}{', ...' if len(added) > 2 else ''}) in these processes "
                "only, and Lightning loads the trained weights back into the main process's module, "
                "which lacks them, without an error: the trained layers would be lost. "
                "Use strategy='ddp'")
        if self.adapted.model is not model:
            setattr(pl_module, self.attribute, self.adapted.model)
        if len(self.adapted.phases) > 1:
            _check_lightning_strategy(trainer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The layers thawkit holds in inference mode (norm layers under the frozen or affine
        # policy, with running statistics; frozen blocks under frozen_dropout: off) have
        # training=False, and a forward pre-hook sets it again before every forward pass; set
        # their flag to the module's so that Lightning's "Found N module(s) in eval mode at the
        # start of training" counts only the user's own.
        adapted = self._require()
        held = list(adapted.inference_modules().values())
        for path, module in thawkit.norm_modules(adapted.model).items():
            if adapted.norm_mode(path) in ("frozen", "affine") and thawkit.has_running_stats(module):
                held.append(module)
        for module in held:
            if not module.training:
                module.training = pl_module.training

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._wrapped = self._require().trainable  # the set Lightning's DDP wrap has registered

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        adapted = self._require()
        adapted.on_epoch_start(trainer.current_epoch)
        if self._wrapped is not None and adapted.trainable != self._wrapped:
            _rewrap(trainer)
            self._wrapped = adapted.trainable
        if self.log:
            trainable = sum(p.numel() for p in adapted.model.parameters() if p.requires_grad)
            kwargs = {"on_step": False, "on_epoch": True, "sync_dist": trainer.world_size > 1}
            pl_module.log("thawkit/phase", float(adapted.phase), **kwargs)
            pl_module.log("thawkit/trainable_params", float(trainable), **kwargs)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {} if self.adapted is None else {"adapted": self.adapted.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "adapted" in state_dict:
            # Lightning calls this after setup() and before it wraps the model for DDP and builds
            # the optimizer: the checkpoint's phase and trainable set are in place for both
            self._require().load_state_dict(state_dict["adapted"])

    # ``strategy="ddp_spawn"`` pickles the callbacks into each process; a plugin manager holds
    # modules, which do not pickle: the shared one is looked up again on the other side
    def __getstate__(self) -> dict[str, Any]:
        if self.pm is not thawkit.default_plugin_manager():
            raise ConfigError("ThawkitFinetuning(pm=...): a callback with its own plugin manager cannot "
                              "be sent to other processes (strategy='ddp_spawn'); use strategy='ddp', or "
                              "register the plugins on the shared manager (thawkit.register)")
        if self.adapted is not None:
            raise ConfigError("ThawkitFinetuning: an adapted model cannot be sent to other processes "
                              "(strategy='ddp_spawn'); let the callback adapt the model, or use "
                              "strategy='ddp'")
        return {**self.__dict__, "pm": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.pm = thawkit.default_plugin_manager()

    def _require(self) -> Adapted:
        if self.adapted is None:
            raise ConfigError("ThawkitFinetuning: the model is not adapted yet; this callback adapts it "
                              "in setup(), so it must be in the Trainer's callbacks")
        return self.adapted


def _check_lightning_strategy(trainer: pl.Trainer) -> None:
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
        raise ConfigError(
            f"ThawkitFinetuning: strategy phases thaw parameters during training, which thawkit "
            f"supports under Lightning's single-device and DDP strategies; this Trainer uses "
            f"{type(trainer.strategy).__name__}. Use strategy='ddp' or a one-phase thawkit strategy")


def _launches_processes(trainer: pl.Trainer) -> bool:
    """Whether the strategy starts its worker processes from this one (spawn, fork)."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    return isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)


def _rewrap(trainer: pl.Trainer) -> None:
    """Wrap the module in a new DistributedDataParallel, which registers the parameters that
    require gradients now (DDP registers them once, when it is built: Lightning #20340)."""
    from lightning.pytorch.strategies import DDPStrategy
    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy) or not isinstance(strategy.model, DistributedDataParallel):
        return
    strategy.model = strategy.lightning_module
    strategy.configure_ddp()
    if hasattr(strategy, "_pl_static_graph_delay_done"):
        strategy._pl_static_graph_delay_done = False  # the new wrapper runs its first iteration again


# --------------------------------------------------------------------- optimizers
def configure_optimizers(pl_module: pl.LightningModule, optimizer: str | dict[str, Any] | None = None, *,
                         schedule: str | dict[str, Any] | None = None, steps_per_epoch: int | None = None,
                         monitor: str = "val_loss", **settings: Any) -> dict[str, Any]:
    """What ``LightningModule.configure_optimizers`` returns: thawkit's optimizer and a schedule.

    The optimizer holds every parameter that will ever thaw, in named groups (``layer4``,
    ``layer4.no_decay``, ``fc``, ...) that never change while phases thaw, so Lightning's
    ``LearningRateMonitor`` shows one series per group and the schedule runs unchanged across
    thaws (a block thaws at the scheduled rate of that moment). ``optimizer`` (a name or a recipe's
    ``optimizer`` section) and ``settings`` (``lr``, ``weight_decay``, ``layer_decay``,
    ``momentum``, ...) are those of :meth:`thawkit.Adapted.optimizer`; without them, the
    callback's ``optimizer``. ``schedule`` (default: the callback's; none: a constant lr) is a
    registered schedule's name or section, run over ``trainer.max_epochs`` epochs of
    ``steps_per_epoch`` optimizer steps (default: from ``trainer.estimated_stepping_batches``,
    which loads the training data early; with a resumable loader, give ``steps_per_epoch``:
    Lightning #20550 skips restoring a loader's mid-epoch position once the data was loaded
    in ``configure_optimizers``). ``monitor`` is the metric a ``plateau`` schedule watches.
    """
    callback = _callback_of(pl_module)
    adapted = callback._require()
    pm = adapted.pm
    if optimizer is None and not settings:
        config = callback.optimizer if callback.optimizer is not None else thawkit.OptimizerSettings.of()
    else:
        config = _optimizer_settings(optimizer if optimizer is not None else "adamw", pm,
                                     "configure_optimizers", **settings)
    built = adapted.optimizer(config)
    section = _schedule_section(schedule, pm, "configure_optimizers") if schedule is not None \
        else callback.schedule
    if section is None:
        return {"optimizer": built}
    from .train.schedules import build_scheduler, watches_metric

    epochs, steps_per_epoch = _run_length(section, pl_module.trainer, steps_per_epoch)
    scheduler, interval = build_scheduler(section, built, pm=pm, epochs=epochs,
                                          steps_per_epoch=steps_per_epoch, where="configure_optimizers")
    lr_scheduler: dict[str, Any] = {"scheduler": scheduler, "interval": interval, "frequency": 1,
                                    "name": f"thawkit-{section.name}"}
    if watches_metric(scheduler):
        lr_scheduler["monitor"] = monitor
    return {"optimizer": built, "lr_scheduler": lr_scheduler}


def _callback_of(pl_module: pl.LightningModule) -> ThawkitFinetuning:
    trainer = getattr(pl_module, "_trainer", None)
    found = [c for c in (trainer.callbacks if trainer is not None else [])
             if isinstance(c, ThawkitFinetuning)]
    if len(found) != 1:
        raise ConfigError(
            f"configure_optimizers({type(pl_module).__name__}): needs exactly one ThawkitFinetuning "
            f"callback in the Trainer's callbacks, found {len(found)}"
            + ("" if trainer is not None else " (the module is not attached to a Trainer)"))
    return found[0]


def _optimizer_settings(optimizer: str | dict[str, Any], pm: ThawkitPluginManager, where: str,
                        **settings: Any) -> OptimizerSettings:
    name, settings = _name_and_params(optimizer, "optimizer", where, settings, default="adamw")
    config = thawkit.OptimizerSettings.of(name, **settings)
    config.check_against(pm.optimizers.get(config.name, where=f"{where}: optimizer.name"),
                         where=f"{where}: optimizer")
    return config


def _name_and_params(value: Any, kind: str, where: str, params: dict[str, Any],
                     default: str | None = None) -> tuple[str, dict[str, Any]]:
    """A name, or a recipe's section (a mapping with ``name``), and the keyword arguments merged in."""
    if isinstance(value, str):
        return value, params
    if not isinstance(value, dict):
        raise ConfigError(f"{where}({kind}=...): expected a {kind} name or a {kind} section (a mapping "
                          f"with 'name'), got {type(value).__name__}")
    section = dict(value)
    name = section.pop("name", default)
    if not isinstance(name, str):
        raise ConfigError(f"{where}({kind}=...): a {kind} section needs a 'name'; got {value}")
    clash = sorted(set(section) & set(params))
    if clash:
        raise ConfigError(f"{where}: {', '.join(clash)} given both in the {kind} section and as keyword "
                          "arguments")
    return name, {**section, **params}


def _schedule_section(schedule: str | dict[str, Any], pm: ThawkitPluginManager, where: str) -> Any:
    from pydantic import ValidationError

    from .train.sections import ScheduleSection

    data = {"name": schedule} if isinstance(schedule, str) else schedule
    if not isinstance(data, dict):
        raise ConfigError(f"{where}(schedule=...): expected a schedule name or a schedule section "
                          f"(a mapping), got {type(schedule).__name__}")
    try:
        section = ScheduleSection.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(thawkit.format_validation_error(exc, where=where, prefix=("schedule",),
                                                          model=ScheduleSection)) from None
    section.resolve(pm, where)
    return section


def _run_length(section: Any, trainer: pl.Trainer, steps_per_epoch: int | None) -> tuple[int, int]:
    """The epochs and optimizer steps per epoch a schedule runs over, from the Trainer."""
    epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
    if steps_per_epoch is None:
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError(f"configure_optimizers: schedule {section.name!r} needs a finite run; set "
                              "Trainer(max_epochs=...) or max_steps, or give steps_per_epoch")
        steps_per_epoch = max(1, math.ceil(int(total) / epochs))
    return epochs, steps_per_epoch
