"""What a plugin sees of a training run, and which plugins a run registers for itself.

The loop emits its events as hooks (``thawkit_run_start``, ``thawkit_epoch_end``, ... in
:mod:`~thawkit.plugins.train.hookspecs`) with a :class:`Run` as ``run``. For the time of
one run it registers the caller's ``callbacks`` (on every process) and the recipe's
``train.loggers`` (on rank 0), and unregisters them when the run ends, however it ends.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError, closest

if TYPE_CHECKING:
    from thawkit import Adapted, Recipe, ThawkitPluginManager

    from .loop import Trainer


@dataclass(frozen=True)
class ValOutputs:
    """Per-sample results of one evaluation on ``data.val``, in the order the validation batches
    come (the folder's order; under torchrun, this process's share): ``losses``, each sample's
    cross-entropy (float32, no label smoothing), and ``correct``, whether its top-1 was right.
    A search compares two runs image by image with them (a paired comparison)."""

    losses: Any
    correct: Any


class Run:
    """A training run as event hooks see it (the ``run`` argument of ``thawkit_epoch_end``...).

    Read-only views of the run, live as it goes: ``recipe`` (the run's resolved recipe),
    ``run_dir``, ``adapted`` (model, layout, plan and phases), ``model``, ``optimizer``,
    ``scheduler``, ``device``, ``epochs`` (of the whole run), ``epochs_done``, ``resumed``
    (this start continues from a checkpoint), ``is_main`` (rank 0 under torchrun, always
    True in one process) and ``stop_reason``. Two actions: :meth:`request_stop` and
    :meth:`log`.

    A plugin that gives up on a run going nowhere, for instance::

        @thawkit.hookimpl
        def thawkit_epoch_end(run, epoch, metrics):
            if epoch >= 3 and metrics["val_top1"] < 0.2:
                run.request_stop(f"val top-1 {metrics['val_top1']:.0%} after {epoch} epochs")
    """

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer
        #: True when this start continues the run from its checkpoint (``--resume``)
        self.resumed = False
        #: the first reason given to :meth:`request_stop` in this start, else None
        self.stop_reason: str | None = None

    @property
    def recipe(self) -> Recipe:
        return self._trainer.s.recipe

    @property
    def run_dir(self) -> Path:
        return self._trainer.s.run_dir

    @property
    def adapted(self) -> Adapted:
        return self._trainer.s.adapted

    @property
    def model(self) -> Any:
        return self._trainer.s.model

    @property
    def optimizer(self) -> Any:
        return self._trainer.s.optimizer

    @property
    def scheduler(self) -> Any:
        return self._trainer.s.scheduler

    @property
    def device(self) -> Any:
        return self._trainer.s.device

    @property
    def epochs(self) -> int:
        return self._trainer.s.epochs

    @property
    def epochs_done(self) -> int:
        """Epochs completed so far (at ``thawkit_run_start`` of a resumed run: those before it)."""
        return self._trainer.state.epoch

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run directory (rank 0 of a torchrun job)."""
        return self._trainer.world.is_main

    @property
    def interrupt_requested(self) -> bool:
        """Whether a Ctrl-C (SIGINT) reached the run. The run stops after the current step, or
        ends normally if that was its last one; a plugin that drives several runs (a search)
        reads this to stop too."""
        return bool(self._trainer.interrupt_requested)

    @property
    def val_outputs(self) -> ValOutputs | None:
        """Per-sample results of the latest evaluation (None before the first): at
        ``thawkit_epoch_end``, those of that epoch."""
        return self._trainer.val_outputs

    def request_stop(self, reason: str) -> None:
        """End the run after the current epoch, with its checkpoint: ``run.json`` says
        ``stopped`` with ``reason`` (the first one given wins), and ``--resume`` can continue
        it. Under torchrun, a request from any process stops them all after the same epoch."""
        if self.stop_reason is None:
            self.stop_reason = str(reason)

    def log(self, line: str) -> None:
        """Print a line where the run prints its own (rank 0 only under torchrun)."""
        self._trainer.log(line)

    def __repr__(self) -> str:
        return f"Run({str(self.run_dir)!r}, epoch {self.epochs_done}/{self.epochs})"


@contextlib.contextmanager
def run_plugins(run: Run, callbacks: Sequence[object]) -> Iterator[None]:
    """Register ``callbacks`` (every process) and the recipe's loggers (rank 0) for one run;
    unregister them afterwards, whether the run ends well, fails, or a logger fails to build."""
    from .sections import active_loggers, logger_registry

    pm = run.recipe.plugin_manager
    check_callbacks(pm, callbacks)
    names: list[str] = []
    try:
        for index, obj in enumerate(callbacks):
            names.append(_register_callback(pm, obj, index))
        if run.is_main:
            registry = logger_registry(pm)
            for choice in active_loggers(run.recipe.train):
                entry = registry.entries[choice.name]
                with pm.guard(entry.plugin, f"building logger {choice.name!r}"):
                    logger = entry.obj(run, **choice.params)
                name = pm.register(logger, name=f"{choice.name} logger ({entry.plugin})")
                if name is not None:
                    names.append(name)
        yield
    finally:
        for name in reversed(names):
            pm.unregister(name=name)


def check_callbacks(pm: ThawkitPluginManager, callbacks: Sequence[object]) -> None:
    """Before anything is written: each callback is new to ``pm`` and implements only its hooks."""
    hooks = {n for n in dir(pm.hook) if n.startswith("thawkit_") and getattr(pm.hook, n).spec}
    for index, obj in enumerate(callbacks):
        where = f"callbacks[{index}] {type(obj).__name__}"
        if pm.is_registered(obj) or any(obj is other for other in callbacks[:index]):
            raise ConfigError(f"callbacks=: {where} is already registered with the recipe's "
                              "plugin manager; pass each plugin once, in one place")
        for attr in dir(obj):
            if attr.startswith("thawkit_") and attr not in hooks \
                    and pm.parse_hookimpl_opts(obj, attr) is not None:
                hint = closest(attr, hooks)
                raise ConfigError(f"callbacks=: {where}: {attr} is not a thawkit hook"
                                  + (f"; did you mean {hint[0]}?" if hint else ""))


def _register_callback(pm: ThawkitPluginManager, obj: object, index: int) -> str:
    name = pm.register(obj, name=f"callbacks[{index}] {type(obj).__name__}")
    assert name is not None  # only a name blocked on purpose would give None
    return name


def run_failed(run: Run, error: BaseException) -> None:
    """``thawkit_run_failed``; a plugin failing in it too is logged, not raised: the run's own
    error is the one its caller gets."""
    try:
        run.recipe.plugin_manager.hook.thawkit_run_failed(run=run, error=error)
    except Exception as exc:  # noqa: BLE001 - reported, and the original error goes on
        run.log(f"warning: while the run failed: {exc}")
