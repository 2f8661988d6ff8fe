"""WiSE-FT for runs: the starting weights, the interpolated model, and the end-of-run sweep.

What a run started from is in its ``start.json`` (:mod:`.start`): a digest per tensor and
where the weights came from. WiSE-FT needs the starting values of the tensors the run changed
only: those outside the head come from ``start.safetensors`` (a run whose recipe names no
weights) or from the start rebuilt from the recipe, each checked against its digest; the
tensors the run left alone are the fine-tuned model's own. Interpolation itself is
:func:`thawkit.plugins.interpolation.interpolate`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError, WeightsError

from ..interpolation import check_alpha, head_keys, interpolate, state_digest
from ..weights import read_weights
from .adapter_export import has_adapters
from .run_model import RunModel, load_run_model
from .rundir import RunDir
from .start import changed_only, read_start, rebuild_start, start_tensors

if TYPE_CHECKING:
    import torch
    from thawkit import ThawkitPluginManager

    from .loop import Trainer

_MOVED = ("record_start", "START_FORMAT")


def __getattr__(name: str) -> Any:
    """Names that moved to :mod:`.start` (what a run started from is no longer WiSE-FT's
    alone: resume and predict need it too) keep working, with a warning."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import warnings

    from . import start

    warnings.warn(f"{__name__}.{name} moved to thawkit.plugins.train.start.{name}",
                  DeprecationWarning, stacklevel=2)
    return getattr(start, name)


def start_state(run_dir: str | Path, *, pm: ThawkitPluginManager | None = None
                ) -> dict[str, torch.Tensor]:
    """The weights run ``run_dir`` started from (outside the new head), checked against its
    ``start.json``; a :class:`~thawkit.WeightsError` saying what is missing when they cannot be had."""
    return _start(Path(run_dir), pm, None)


def _start(run_dir: Path, pm: ThawkitPluginManager | None,
           tuned: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The starting weights outside the head; ``tuned``: the fine-tuned ones, which give the
    tensors the run left alone without rebuilding anything."""
    record = read_start(run_dir)
    if changed_only(record):
        return start_tensors(run_dir, list(record["tensors"]), have=tuned, pm=pm)
    # thawkit-start/1: one digest over everything, the whole start saved when no field names it
    if record.get("saved"):
        state = read_weights(run_dir / record["saved"])
        origin = str(run_dir / record["saved"])
    else:
        adapted = rebuild_start(run_dir, record, pm=pm)
        full = adapted.model.state_dict()
        origin = record.get("file") or f"{record['spec']} weights={record.get('weights')!r}"
        state = {k: full[k] for k in sorted(set(full) - head_keys(full, adapted.layout))}
    if state_digest(state, state) != record["sha256"]:
        raise WeightsError(f"WiSE-FT: the starting weights from {origin} are not the ones run "
                           f"{str(run_dir)!r} started from (SHA-256 differs from its "
                           f"{RunDir.START})")
    return state


def wise_model(run_dir: str | Path, alpha: float, *, best: bool = False,
               pm: ThawkitPluginManager | None = None) -> RunModel:
    """The run's model (final weights, or ``best=True``) with its backbone interpolated:
    ``(1 - alpha) * start + alpha * fine_tuned``, the head the fine-tuned one."""
    alpha = check_alpha(alpha, "WiSE-FT")
    return interpolate_run(load_run_model(run_dir, best=best, pm=pm), run_dir, alpha)


def interpolate_run(run: RunModel, run_dir: str | Path, alpha: float) -> RunModel:
    """``run`` (the loaded model of ``run_dir``) with its backbone interpolated in place."""
    if has_adapters(run.model):
        raise ConfigError(f"WiSE-FT: run {str(run_dir)!r} trains adapters "
                          f"({run.recipe.strategy.name}): its base weights never moved, so there "
                          "is nothing to interpolate")
    tuned = run.model.state_dict()
    start = _start(Path(run_dir), run.recipe.plugin_manager, tuned)
    run.model.load_state_dict(interpolate(start, tuned, alpha, head=run.layout))
    return run


def sweep(trainer: Trainer, alphas: list[float]) -> list[dict[str, Any]]:
    """Val metrics of the finished model interpolated at each of ``alphas``; the model gets its
    fine-tuned weights back afterwards."""
    s = trainer.s
    tuned = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
    start = _start(s.run_dir, s.recipe.plugin_manager, tuned)
    rows = []
    try:
        for alpha in alphas:
            s.model.load_state_dict(interpolate(start, tuned, alpha, head=s.adapted.layout))
            rows.append({"alpha": alpha, **trainer.evaluate()})
    finally:
        s.model.load_state_dict(tuned)
    return rows


def sweep_line(rows: list[dict[str, Any]], final_top1: float) -> str:
    """The log line of a sweep: val top-1 at each alpha, and the fine-tuned model's."""
    cells = ", ".join(f"alpha {r['alpha']:g} {100 * r['val_top1']:.2f}%" for r in rows)
    return (f"WiSE-FT on the val set (alpha 0: starting backbone, 1: fine-tuned): top-1 {cells}; "
            f"fine-tuned {100 * final_top1:.2f}%")
