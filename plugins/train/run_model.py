"""The trained model of a run directory (:func:`load_run_model`), shared by ``predict``, ``export``,
the adapter export and WiSE-FT. torch is imported where it is used (:func:`plain_head`), so that
importing this module stays cheap."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError, WeightsError, adapt_recipe

from ..weights import read_weights
from .readers import Reader, reader_for
from .rundir import RunDir, read_data_info, read_run_recipe, run_status
from .start import complete_state, is_changed_only

if TYPE_CHECKING:
    from thawkit import Recipe, ThawkitPluginManager
    from torch import nn


@dataclass
class RunModel:
    """A run's trained model (eval mode) with its classes, preprocessing, recipe, layout and the
    weights file it was loaded from."""

    model: nn.Module
    classes: list[str]
    prep: Any  # the data reader's preprocessing (images: data.Preprocess)
    recipe: Recipe
    layout: Any
    weights: Path
    reader: Reader  # the recipe's data.reader


def load_run_model(run_dir: str | Path, *, best: bool = False,
                   pm: ThawkitPluginManager | None = None, trust: bool = False,
                   command: str = "load_run_model") -> RunModel:
    """The trained model of a run (final weights, or ``best=True`` for the best epoch), in eval mode.

    ``trust=False``: a run recipe that names plugins or ``python:`` factories (other than
    thawkit's own) is refused unless those plugins are loaded in ``pm`` already; pass
    ``trust=True`` only for run directories whose code you trust. ``pm`` reads the run's recipe
    (:func:`~.rundir.read_run_recipe`), whose own manager builds the model.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {str(run_dir)!r} does not exist")
    recipe = read_run_recipe(run_dir, pm=pm, trust=trust, command=command)
    info = read_data_info(run_dir)
    file = RunDir(run_dir).weights(best)
    if not file.is_file():
        hint = "" if best else "; use --best for the best epoch so far, or finish it with " \
                               f"thawkit train --resume {run_dir}"
        raise ConfigError(f"{str(run_dir)!r} has no {file.name} (run status: {run_status(run_dir)})"
                          f"{hint}")
    adapted = adapt_recipe(recipe, num_classes=len(info["classes"]), load_weights=False)
    model = adapted.model
    state = read_weights(file)
    built = model.state_dict()  # a tensor that is non-finite as built (a mask) is by design
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())
           and (k not in built or bool(built[k].isfinite().all()))]
    if bad:
        raise WeightsError(f"{file} holds NaN or infinite values ({len(bad)} tensors, e.g. "
                           f"{bad[0]}): the run diverged; retrain with a lower optimizer.lr")
    if best:
        state = _completed_best(run_dir, file, state, built, recipe.plugin_manager)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"{file} does not fit the model its recipe builds: "
                           f"{str(exc).splitlines()[0]}") from None
    model.eval()
    reader = reader_for(recipe)
    return RunModel(model, list(info["classes"]), reader.preprocess_from_dict(recipe, info["preprocess"]),
                    recipe, adapted.layout, file, reader)


def _completed_best(run_dir: Path, file: Path, state: dict[str, Any], built: dict[str, Any],
                    pm: ThawkitPluginManager) -> dict[str, Any]:
    """``best.safetensors`` holds only the tensors the run can change (:mod:`.start`): the
    others are the start's, found in the complete final weights or in the rebuilt start."""
    if not is_changed_only(file):
        return state  # a run from before, with complete best weights
    final = RunDir(run_dir).model
    have = read_weights(final) if final.is_file() else None
    return complete_state(run_dir, state, list(built), file=file, have=have, rebuild=True, pm=pm,
                          what=file.name)


def plain_head(model: nn.Module, layout: Any, state: dict[str, Any]) -> dict[str, Any]:
    """Rename ``<path>.1.*`` keys of a ``Sequential(Dropout, classifier)`` head to ``<path>.*``:
    dropout is the identity at inference, and the builder's own head has no Sequential."""
    from torch import nn

    for path in layout.classifiers:
        parent, _, leaf = path.rpartition(".")
        if leaf != "1" or not parent:
            continue
        holder = model.get_submodule(parent)
        if isinstance(holder, nn.Sequential) and len(holder) == 2 and isinstance(holder[0], nn.Dropout):
            state = {(parent + k[len(path):] if k == path or k.startswith(path + ".") else k): v
                     for k, v in state.items()}
    return state
