"""Hooks the training plugin adds to thawkit (through ``thawkit_add_hookspecs``).

Two kinds: collector hooks (``thawkit_register_schedules``, ``thawkit_register_loggers``,
``thawkit_register_readers``),
called once to build a registry, and the run's events, in the order a run meets them:
``thawkit_run_start``, then per epoch ``thawkit_phase_change`` (when the trainable set
changes), ``thawkit_epoch_end`` and ``thawkit_checkpoint_saved``, and last ``thawkit_run_end``
or ``thawkit_run_failed``. Every implementation of an event is called, newest plugin first.

Who sees the events: a logger named in ``train.loggers`` lives on rank 0 only (under
torchrun, one process writes); every other plugin (entry points, ``plugins:``,
``train(..., callbacks=[...])``) is called on every process, and checks ``run.is_main``
before writing anything. An event implementation that raises ends the run as failed
(``run.json`` says so, naming the plugin); what the last checkpoint holds stays resumable.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .events import Run

hookspec = pluggy.HookspecMarker("thawkit")


@hookspec
def thawkit_register_schedules(register: Callable[..., None]) -> None:
    """Register learning-rate schedules for ``thawkit train``.

    Parameters:
        register: call ``register(name, factory, replace=False)`` where
            ``factory(optimizer, *, epochs: int, steps_per_epoch: int, warmup_epochs: float,
            **params)`` returns a ``torch.optim.lr_scheduler`` object (``warmup_epochs``
            is the recipe's ``schedule.warmup_epochs``, passed to every schedule). An optional attribute
            ``factory.Params`` (pydantic model) validates ``params``; an optional
            ``factory.interval`` is ``"step"`` (default) or ``"epoch"``.

    Returns: nothing (all implementations are called).

    Contract: the scheduler scales every group's *own* initial lr by one common factor
    at each step (thawkit's per-block multipliers hold), keeps the lr finite and >= 0,
    never adds or removes groups, and resumes exactly from its ``state_dict()``.
    ``thawkit.plugins.testing.check_schedule`` checks it.
    """


@hookspec
def thawkit_register_loggers(register: Callable[..., None]) -> None:
    """Register loggers that a recipe selects by name in ``train.loggers``.

    Parameters:
        register: call ``register(name, factory, replace=False)`` where ``factory(run,
            **options)`` returns a plugin object whose ``@thawkit.hookimpl`` methods receive the
            run's events (``thawkit_run_start``, ``thawkit_epoch_end``, ...). It is built when
            the run starts, on rank 0 only, registered for that run and unregistered when it
            ends. ``options`` are the recipe's (``train.loggers: [{name: mlflow, experiment:
            x}]``), checked when the recipe is read: by ``factory.Params`` (a pydantic model),
            or else against the factory's keyword arguments. An optional
            ``factory.requires``, ``{module: what to install}``, names packages that must be
            importable (a missing one is a recipe error before anything is written).

    Returns: nothing (all implementations are called).
    """


@hookspec
def thawkit_register_readers(register: Callable[..., None]) -> None:
    """Register data readers that a recipe selects by name in ``data.reader``.

    Parameters:
        register: call ``register(name, reader)`` where ``reader`` is a
            :class:`thawkit.plugins.train.readers.Reader`: it scans ``data.train`` and
            ``data.val`` (the checks ``thawkit plan`` makes too), resolves the preprocessing
            (kept in the run's ``data.json``), builds the loaders (batches of ``(inputs,
            labels)``, ``inputs`` a tensor or a mapping of tensors), moves inputs to the
            device, runs the model on them (``forward(model, inputs)`` returns the logits) and
            prepares ``thawkit predict``'s inputs, and an export's (``export_preprocess``,
            ``preprocess_from_export``, ``transform``: their defaults serve a reader whose
            preprocessing reads no files). ``reader.cache_off`` says why the feature
            cache is not exact for its data (``None``: the cache decides per phase);
            ``reader.skips_parameters`` (default False) that the model may leave trainable
            parameters out of a training step (layers skipped at random), which DDP must
            then look for.

    Returns: nothing (all implementations are called). The training plugin registers
    ``images`` (ImageFolder directories, the default); the transformers plugin ``text`` (CSV
    or JSON Lines) and ``audio`` (a folder per class of WAV/FLAC files).
    """


@hookspec
def thawkit_run_start(run: Run) -> None:
    """A run starts, or continues from its checkpoint (``run.resumed``).

    Parameters:
        run: the run (:class:`thawkit.plugins.train.Run`): recipe, run directory, model,
            optimizer, ``epochs``, ``epochs_done`` (where it continues), ``is_main``,
            ``request_stop(reason)``.

    Returns: nothing (all implementations are called). Called after the run directory,
    model and optimizer are ready, before the first epoch's first step.
    """


@hookspec
def thawkit_phase_change(run: Run, phase: int, epoch: int) -> None:
    """The strategy changed the trainable set: a new phase starts with this epoch.

    Parameters:
        run: the run (:class:`thawkit.plugins.train.Run`); ``run.adapted.phases[phase]``
            describes the new phase.
        phase: index of the phase that starts (0 is the first).
        epoch: the epoch it starts with, counted from 1.

    Returns: nothing (all implementations are called). Not called for the first phase
    of a run, which holds from its start.
    """


@hookspec
def thawkit_epoch_end(run: Run, epoch: int, metrics: dict[str, float]) -> None:
    """An epoch ended: trained, evaluated, its metrics ready; its checkpoint comes next.

    Parameters:
        run: the run (:class:`thawkit.plugins.train.Run`); ``run.request_stop(reason)``
            ends the run after this epoch, with its checkpoint (early stopping, a pruner).
        epoch: the epoch that ended, counted from 1.
        metrics: one flat mapping of numbers, the same on every process: ``train_loss``,
            ``train_top1`` (fraction of the epoch's training images classified right),
            ``val_loss``, ``val_top1``, ``val_top5`` (only with five or more classes),
            ``lr/<group>`` (the learning rate each named parameter group started the epoch
            with), ``phase`` (int), ``trainable_params`` (int) and ``seconds`` (the epoch's
            training and evaluation time).

    Returns: nothing (all implementations are called). The built-in ``jsonl`` logger
    writes the line of ``metrics.jsonl`` first; a run continued from a checkpoint calls it
    again only for epochs the checkpoint does not hold.
    """


@hookspec
def thawkit_checkpoint_saved(run: Run, path: Path, epoch: int) -> None:
    """The run wrote its checkpoint (after every epoch, and on a first Ctrl-C mid-epoch).

    Parameters:
        run: the run (:class:`thawkit.plugins.train.Run`).
        path: the checkpoint file (``run_dir / "checkpoint.pt"``), complete on disk.
        epoch: the epochs it holds completely (mid-epoch: those before the interrupted one).

    Returns: nothing (all implementations are called).
    """


@hookspec
def thawkit_run_end(run: Run, status: str) -> None:
    """The run ended without an error; ``run.json`` and the plot are written.

    Parameters:
        run: the run (:class:`thawkit.plugins.train.Run`).
        status: ``finished`` (every epoch done, ``model.safetensors`` written),
            ``stopped`` (``--stop-after`` or ``run.request_stop``: ``run.stop_reason``) or
            ``interrupted`` (a first Ctrl-C; the checkpoint is saved).

    Returns: nothing (all implementations are called). A run continued later calls
    ``thawkit_run_start`` again. An implementation that raises: the error reaches the caller
    naming the plugin, while ``run.json`` keeps the status the run ended with.
    """


@hookspec
def thawkit_run_failed(run: Run, error: BaseException) -> None:
    """The run ended with an error; ``run.json`` says ``failed`` (or ``interrupted`` for a
    second Ctrl-C) with the reason, and the error is raised again after this hook.

    Parameters:
        run: the run (:class:`thawkit.plugins.train.Run`).
        error: the exception that ended it (a ``KeyboardInterrupt`` for a second Ctrl-C).

    Returns: nothing (all implementations are called). An implementation that raises in
    turn is reported in the log; the run's own error is the one raised.
    """
