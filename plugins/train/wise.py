"""WiSE-FT for runs: what a run started from, the interpolated model, and the end-of-run sweep.

A new run writes ``start.json``: the SHA-256 of its starting weights outside the new head, and
where they came from. When the recipe names them (``backbone.weights``: a file, recorded with
its absolute path, or published weights; or ``backbone.pretrained``), they are rebuilt from
there when needed and checked against the digest; when it names none (the builder's own
initialisation, random or not), the run saves them as ``start.safetensors``, since nothing
else could give them back. Interpolation itself is :func:`thawkit.plugins.interpolation.interpolate`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError, WeightsError, adapt, load_backbone

from ..interpolation import check_alpha, head_keys, interpolate, state_digest
from ..weights import read_weights
from .adapter_export import has_adapters
from .checkpoint import save_weights, write_json
from .run_model import RunModel, load_run_model
from .rundir import RunDir, read_data_info, read_run_recipe

if TYPE_CHECKING:
    import torch
    from thawkit import Adapted, Recipe, ThawkitPluginManager

    from .loop import Trainer

START_FORMAT = "thawkit-start/1"


def _named(recipe: Recipe) -> bool:
    return recipe.backbone.weights is not None or recipe.backbone.pretrained


def record_start(run_dir: Path, recipe: Recipe, adapted: Adapted) -> None:
    """Write ``start.json`` (and, for weights no recipe field names, ``start.safetensors``)."""
    state = adapted.model.state_dict()
    keys = sorted(set(state) - head_keys(state, adapted.layout))
    weights = recipe.backbone.weights
    file = Path(weights).resolve() if weights and Path(weights).is_file() else None
    record = {"format": START_FORMAT, "spec": recipe.backbone.spec, "weights": weights,
              "pretrained": recipe.backbone.pretrained, "file": str(file) if file else None,
              "saved": None if _named(recipe) else RunDir.START_WEIGHTS, "tensors": len(keys),
              "sha256": state_digest(state, keys)}
    if record["saved"]:
        save_weights(RunDir(run_dir).start_weights, {k: state[k] for k in keys})
    write_json(RunDir(run_dir).start, record)


def start_state(run_dir: str | Path, *, pm: ThawkitPluginManager | None = None
                ) -> dict[str, torch.Tensor]:
    """The weights run ``run_dir`` started from (outside the new head), checked against its
    ``start.json``; a :class:`~thawkit.WeightsError` saying what is missing when they cannot be had."""
    run_dir = Path(run_dir)
    path = RunDir(run_dir).start
    if not path.is_file():
        raise WeightsError(f"WiSE-FT: {str(run_dir)!r} has no {path.name}, so its starting weights "
                           "are unknown (a run from a thawkit that did not record them cannot be "
                           "interpolated)")
    try:
        record = json.loads(path.read_text())
        record["sha256"]
    except (ValueError, TypeError, KeyError):
        raise WeightsError(f"WiSE-FT: {path} is not a {START_FORMAT} record (it does not parse or "
                           "has no sha256); the run's starting weights are unknown") from None
    if record.get("saved"):
        state = read_weights(run_dir / record["saved"])
        origin = str(run_dir / record["saved"])
    else:
        recipe = read_run_recipe(run_dir, pm=pm)
        pm = recipe.plugin_manager
        options = recipe.backbone.load_options()
        if record.get("file"):
            if not Path(record["file"]).is_file():
                raise WeightsError(f"WiSE-FT: the run started from {record['file']}, which no longer "
                                   "exists; put the file back there to interpolate")
            options["weights"] = record["file"]
        origin = record.get("file") or f"{record['spec']} weights={record.get('weights')!r}" + (
            " pretrained" if record.get("pretrained") else "")
        model = load_backbone(recipe.backbone.spec, pm=pm, **options)
        n = len(read_data_info(run_dir)["classes"])
        adapted = adapt(model, recipe.strategy.instance, num_classes=n, dropout=recipe.head.dropout,
                        keep_aux=recipe.head.keep_aux, pm=pm)
        full = adapted.model.state_dict()
        state = {k: full[k] for k in sorted(set(full) - head_keys(full, adapted.layout))}
    if state_digest(state, state) != record["sha256"]:
        raise WeightsError(f"WiSE-FT: the starting weights from {origin} are not the ones run "
                           f"{str(run_dir)!r} started from (SHA-256 differs from its {path.name})")
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
    start = start_state(run_dir, pm=run.recipe.plugin_manager)
    run.model.load_state_dict(interpolate(start, run.model.state_dict(), alpha, head=run.layout))
    return run


def sweep(trainer: Trainer, alphas: list[float]) -> list[dict[str, Any]]:
    """Val metrics of the finished model interpolated at each of ``alphas``; the model gets its
    fine-tuned weights back afterwards."""
    s = trainer.s
    tuned = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
    start = start_state(s.run_dir, pm=s.recipe.plugin_manager)
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
