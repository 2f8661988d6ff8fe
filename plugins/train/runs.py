"""Start a run from a recipe, or continue one from its run directory."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any


from thawkit import ConfigError

from .._deprecation import recipe_manager
from .checkpoint import load_checkpoint, read_jsonl
from .ddp import join
from .events import check_callbacks
from .loop import Outcome, Trainer
from .rundir import (
    RunDir,
    make_run_dir,
    read_run_recipe,
    remove_if_unused,
    remove_leftovers,
    run_lock,
    run_status,
)
from .session import absolute_paths, check_new_run_dir, prepare, torch_flags_restored

if TYPE_CHECKING:
    from thawkit import Recipe, ThawkitPluginManager



def _check_stop_after(stop_after: int | None) -> None:
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after must be a positive number of epochs, got {stop_after}")


def train(recipe: Recipe, *, pm: ThawkitPluginManager | None = None, run_dir: str | Path | None = None,
          stop_after: int | None = None, log: Callable[[str], None] = print,
          progress_bar: bool | None = None, on_step: Callable[[Trainer], None] | None = None,
          callbacks: Sequence[object] = ()) -> Outcome:
    """Train a validated recipe into ``run_dir`` (default ``recipe.train.output``), which must not
    hold another run.

    ``callbacks``: plugin objects (``@thawkit.hookimpl`` methods for the run's events, such as
    ``thawkit_epoch_end``) registered with the recipe's plugin manager for this run only, on
    every process; unregistered when it ends, however it ends.

    Example::

        recipe = thawkit.load_recipe("recipe.yaml", overrides=["train.epochs=5"])
        outcome = thawkit.plugins.train.train(recipe, run_dir="runs/try1", callbacks=[EarlyStop()])

    Under ``torchrun`` (several processes) it trains with DDP; see :mod:`~.ddp`. The recipe's
    plugin manager (``recipe.plugin_manager``) builds everything; ``pm=`` is deprecated.
    """
    recipe_manager(recipe, pm, "train")
    _check_stop_after(stop_after)
    check_callbacks(recipe.plugin_manager, callbacks)
    run_dir = Path(run_dir if run_dir is not None else recipe.train.output)
    world = join(recipe.train.device)
    if not world.is_main:
        log, progress_bar = _quiet, False
    created = make_run_dir(run_dir) if world.is_main else False
    try:
        with run_lock(run_dir):  # in a distributed job, rank 0 alone takes it
            replaced = check_new_run_dir(run_dir)
            if world.is_main:
                remove_leftovers(run_dir)
                if replaced:
                    log(f"note: {replaced}")
            world.barrier()  # every process has checked before rank 0 writes
            with torch_flags_restored():
                session = prepare(recipe, run_dir=run_dir, world=world)
                trainer = Trainer(session, stop_after=stop_after, log=log,
                                  progress_bar=progress_bar, on_step=on_step, callbacks=callbacks)
                log(_with_status(session.describe(), trainer))
                return trainer.fit()
    except BaseException:
        if created:
            remove_if_unused(run_dir)
        raise


def resume(run_dir: str | Path, *, pm: ThawkitPluginManager | None = None,
           stop_after: int | None = None, log: Callable[[str], None] = print,
           progress_bar: bool | None = None, on_step: Callable[[Trainer], None] | None = None,
           expect: Recipe | None = None, callbacks: Sequence[object] = ()) -> Outcome:
    """Continue the run in ``run_dir`` from its checkpoint, with its own recipe (and ``callbacks``
    for this start, as for :func:`train`).

    A run that stopped before its first checkpoint starts again from its recipe; one whose
    last epoch is done but whose final files are missing (killed at the very end) gets them.
    ``expect``: a recipe the caller named too; it must describe the same run. ``pm``: the manager
    the run's recipe is read with (default: the shared one; a recipe naming ``plugins:`` gets its
    own); the run then uses that recipe's manager.
    """
    _check_stop_after(stop_after)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        load_checkpoint(run_dir)  # the error for a missing run directory
    files = RunDir(run_dir)
    with files.lock():  # in a distributed job, rank 0 alone takes it
        fresh = not files.checkpoint.exists() and files.recipe.is_file() and not files.model.exists()
        if not fresh:
            load_checkpoint(run_dir)  # a missing or unreadable checkpoint fails before any building
        recipe = read_run_recipe(run_dir, pm=pm)
        if expect is not None:
            _check_same(expect, recipe, run_dir)
        check_callbacks(recipe.plugin_manager, callbacks)
        world = join(recipe.train.device)
        if not world.is_main:
            log, progress_bar = _quiet, False
        else:
            remove_leftovers(run_dir)
        with torch_flags_restored():
            if fresh:
                if world.is_main:
                    for name in RunDir.STALE_WITHOUT_CHECKPOINT:
                        (run_dir / name).unlink(missing_ok=True)
                world.barrier()  # every process has looked before rank 0 writes
                session = prepare(recipe, run_dir=run_dir, world=world)
                trainer = Trainer(session, stop_after=stop_after, log=log,
                                  progress_bar=progress_bar, on_step=on_step, callbacks=callbacks)
                log(_with_status(f"{run_dir} has no checkpoint yet: starting its run again from "
                                 f"epoch 1; {session.describe()}", trainer))
                return trainer.fit()
            session = prepare(recipe, run_dir=run_dir, resume=True, world=world)
            trainer = Trainer(session, stop_after=stop_after, log=log, progress_bar=progress_bar,
                              on_step=on_step, callbacks=callbacks)
            trainer.restore()
            world.barrier()  # every process has read the checkpoint before rank 0 writes
            if trainer.state.epoch >= recipe.train.epochs:
                if files.model.is_file() and run_status(run_dir) == "finished":
                    return _already_done(trainer)
                log(f"{run_dir}: all {recipe.train.epochs} epochs are done but the run's final "
                    "files are missing; writing them")
            else:
                log(_with_status(f"resuming {run_dir} at epoch {trainer.state.epoch + 1}"
                                 + (f", step {trainer.state.step}" if trainer.state.step else "")
                                 + f" of {recipe.train.epochs}", trainer))
            return trainer.fit()


def _quiet(_line: str) -> None:
    """The log of every process but rank 0's."""


def _with_status(line: str, trainer: Trainer) -> str:
    """The run's first line, with what the pipeline says about the current phase (the cache),
    then a warning line for each doubtful thing about the data."""
    # the phase the next epoch runs in (a resume at a boundary restores the phase before it)
    status = trainer.pipeline.status(trainer.s.adapted.phase_at(trainer.state.epoch))
    line = f"{line}; {status}" if status else line
    return "\n".join([line, *(f"warning: {w}" for w in trainer.s.warnings)])


def _already_done(trainer: Trainer) -> Outcome:
    return Outcome("finished", trainer.state.epoch,
                   f"{trainer.s.run_dir} already finished all {trainer.s.epochs} epochs")


def _check_same(given: Recipe, saved: Recipe, run_dir: Path) -> None:
    a, b = absolute_paths(given.model_dump(mode="json"), given.plugin_manager), saved.model_dump(mode="json")
    for d in (a, b):
        d["train"].pop("output", None)
    if a["head"].get("num_classes") is None:
        a["head"]["num_classes"] = b["head"].get("num_classes")
    diffs = [f"{sec}.{k}" for sec in sorted(set(a) | set(b)) if isinstance(a.get(sec), dict)
             for k in sorted(set(a[sec]) | set(b.get(sec, {})))
             if a[sec].get(k) != b.get(sec, {}).get(k)]
    diffs += [sec for sec in ("plugins",) if a.get(sec) != b.get(sec)]
    if diffs:
        raise ConfigError(f"--resume {run_dir}: the recipe given differs from the run's own recipe "
                          f"in {', '.join(diffs)}; a run continues with the recipe it started with "
                          f"({RunDir(run_dir).recipe}); start a new run to change it")


def summary(run_dir: str | Path) -> dict[str, Any]:
    """Status, last metrics and best accuracy of a run directory (for tables and tests)."""
    files = RunDir(run_dir)
    rows = read_jsonl(files.metrics)
    status = run_status(files.path) if files.status.exists() else None
    return {"status": status, "epochs": len(rows),
            "seconds": round(sum(r["seconds"] for r in rows), 3),
            "final_top1": rows[-1]["val_top1"] if rows else None,
            "best_top1": max((r["val_top1"] for r in rows), default=None),
            "trainable_params": [r["trainable_params"] for r in rows]}
