"""What a run started from, what it can change, and the run files that hold only the changes.

A run directory keeps one complete copy of its model: ``model.safetensors``, written at the
end. ``checkpoint.pt`` and ``best.safetensors`` hold only the tensors training can have
changed (:func:`changing_keys`); everything else is the run's starting model, rebuilt from
the recipe when it is needed (the weights file, published weights, or the builder's
initialisation drawn from ``train.seed``) and checked tensor by tensor against the SHA-256
digests of ``start.json``. A start that cannot be rebuilt exactly is an error that says so,
never a silent difference.

``start.json`` (format ``thawkit-start/2``): ``spec``, ``weights``, ``pretrained``, ``file``
(the absolute path of a weights file), ``saved`` and ``tensors`` (``{key: sha256}`` of every
tensor outside the new head). ``saved`` names ``start.safetensors`` when the recipe names no
weights and the run can change tensors outside its head: their starting values, which
WiSE-FT needs and which a library upgrade (another random initialisation) would lose.
A directory written before (``thawkit-start/1``, full checkpoints) stays readable, and a
resumed one goes on writing full files.
"""
from __future__ import annotations

import json
import random
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import WeightsError

from ..interpolation import head_keys, state_digest
from .checkpoint import save_weights, write_json
from .rundir import RunDir, read_data_info, read_run_recipe

if TYPE_CHECKING:
    import torch
    from thawkit import Adapted, Recipe, ThawkitPluginManager

START_FORMAT = "thawkit-start/2"
#: safetensors metadata of a weights file that holds only the tensors a run changed
CHANGED_ONLY = "thawkit_changed_only"


def seed_rngs(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (a run does so right before it builds its
    model, so that :func:`rebuild_start` draws the same initialisation again)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def changing_keys(adapted: Adapted, upto: int) -> frozenset[str]:
    """State-dict keys of ``adapted.model`` that training can have changed by the end of phase
    ``upto`` (for a whole run: the phase of its last epoch): every parameter trainable in a
    phase so far (norm policy included) or with ``requires_grad`` now, and every buffer except
    the running statistics of norm layers that the policy keeps in inference mode in all those
    phases (a buffer of another kind may change in any forward pass; such buffers are small)."""
    from thawkit import has_running_stats, norm_modules

    model = adapted.model
    names: set[str] = set()
    for i in range(upto + 1):
        names |= adapted.trainable_in(i)
    params = dict(model.named_parameters(remove_duplicate=False))
    trained = {id(p) for n, p in params.items() if n in names or p.requires_grad}
    fixed = {id(p) for p in params.values()} - trained
    for path, module in norm_modules(model).items():
        if has_running_stats(module) and all(adapted.norm_mode(path, i) in ("frozen", "affine")
                                              for i in range(upto + 1)):
            fixed.update(id(b) for b in module.buffers(recurse=False))
    return frozenset(k for k, v in model.state_dict(keep_vars=True).items() if id(v) not in fixed)


def _digests(state: Mapping[str, torch.Tensor], keys: Collection[str]) -> dict[str, str]:
    return {k: state_digest(state, [k]) for k in sorted(keys)}


def record_start(run_dir: Path, recipe: Recipe, adapted: Adapted) -> None:
    """Write ``start.json`` (and, for weights no recipe field names, ``start.safetensors``)."""
    state = adapted.model.state_dict()
    keys = set(state) - head_keys(state, adapted.layout)
    weights = recipe.backbone.weights
    file = Path(weights).resolve() if weights and Path(weights).is_file() else None
    named = weights is not None or recipe.backbone.pretrained
    last = adapted.phase_at(recipe.train.epochs - 1)
    keep = sorted(keys & changing_keys(adapted, last)) if not named else []
    record = {"format": START_FORMAT, "spec": recipe.backbone.spec, "weights": weights,
              "pretrained": recipe.backbone.pretrained, "file": str(file) if file else None,
              "saved": RunDir.START_WEIGHTS if keep else None, "tensors": _digests(state, keys)}
    if keep:
        save_weights(RunDir(run_dir).start_weights, {k: state[k] for k in keep})
    write_json(RunDir(run_dir).start, record)


def read_start(run_dir: str | Path, what: str = "WiSE-FT") -> dict[str, Any]:
    """``start.json`` of a run (either format), or a :class:`~thawkit.WeightsError` saying why not."""
    run_dir = Path(run_dir)
    path = RunDir(run_dir).start
    if not path.is_file():
        why = ("a run from a thawkit that did not record them cannot be interpolated"
               if what == "WiSE-FT" else "they complete the run's files, which hold only what "
               "training changed; the final model.safetensors, where there is one, is complete")
        raise WeightsError(f"{what}: {str(run_dir)!r} has no {RunDir.START}, so its starting weights "
                           f"are unknown ({why})")
    try:
        record = json.loads(path.read_text())
        ok = isinstance(record["sha256"] if record.get("format") != START_FORMAT
                        else record["tensors"], (str, dict))
    except (ValueError, TypeError, KeyError, AttributeError, OSError):
        ok = False
    if not ok:
        raise WeightsError(f"{what}: {path} is not a thawkit-start record (it does not parse or "
                           "has no digests); the run's starting weights are unknown")
    return record


def changed_only(record: dict[str, Any]) -> bool:
    """Whether a run with this start record writes only what changed (the current format)."""
    return record.get("format") == START_FORMAT


@contextmanager
def _rng_kept() -> Iterator[None]:
    """Rebuilding a start re-seeds the generators: give the caller's states back afterwards."""
    import numpy as np
    import torch

    py, npy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def _origin(record: dict[str, Any]) -> str:
    if record.get("file"):
        return str(record["file"])
    if record.get("weights") is not None or record.get("pretrained"):
        return f"{record['spec']} weights={record.get('weights')!r}" + (
            " pretrained" if record.get("pretrained") else "")
    return f"{record['spec']} initialised from train.seed"


def rebuild_start(run_dir: str | Path, record: dict[str, Any], *,
                  pm: ThawkitPluginManager | None = None, what: str = "WiSE-FT") -> Adapted:
    """The model run ``run_dir`` started from, built again as the run built it (seeded with
    its ``train.seed``; a weights file from the path ``start.json`` records)."""
    from thawkit import adapt, load_backbone

    recipe = read_run_recipe(Path(run_dir), pm=pm)
    pm = recipe.plugin_manager
    options = recipe.backbone.load_options()
    if record.get("file"):
        if not Path(record["file"]).is_file():
            raise WeightsError(f"{what}: the run started from {record['file']}, which no longer "
                               "exists; put the file back there")
        options["weights"] = record["file"]
    n = len(read_data_info(Path(run_dir))["classes"])
    with _rng_kept():
        seed_rngs(recipe.train.seed)
        model = load_backbone(recipe.backbone.spec, pm=pm, **options)
        return adapt(model, recipe.strategy.instance, num_classes=n, dropout=recipe.head.dropout,
                     keep_aux=recipe.head.keep_aux, pm=pm)


def start_tensors(run_dir: str | Path, keys: Collection[str], *,
                  have: Mapping[str, torch.Tensor] | None = None, rebuild: bool = True,
                  pm: ThawkitPluginManager | None = None, what: str = "WiSE-FT") -> dict[str, torch.Tensor]:
    """The starting values of ``keys`` (tensors outside the head) of a ``thawkit-start/2`` run.

    Each comes from the first source whose tensor has the digest ``start.json`` recorded:
    ``start.safetensors``, then ``have`` (tensors the caller holds, such as final weights,
    where everything the run left alone is the start), then the start rebuilt from the recipe
    (``rebuild``). A key no source gives exactly is a :class:`~thawkit.WeightsError`.
    """
    from ..weights import read_weights

    run_dir = Path(run_dir)
    record = read_start(run_dir, what)
    digests = record["tensors"]
    unknown = sorted(set(keys) - set(digests))
    if unknown:
        raise WeightsError(f"{what}: {RunDir(run_dir).start} has no digest for {len(unknown)} tensors "
                           f"({', '.join(unknown[:3])}); it does not describe this run's model")
    pools = [read_weights(run_dir / record["saved"])] if record.get("saved") else []
    pools.append(have or {})
    out: dict[str, torch.Tensor] = {}

    def take(pool: Mapping[str, torch.Tensor]) -> None:
        for k in keys:
            if k not in out and k in pool and state_digest(pool, [k]) == digests[k]:
                out[k] = pool[k]

    for pool in pools:
        take(pool)
    if len(out) < len(keys) and rebuild:
        take(rebuild_start(run_dir, record, pm=pm, what=what).model.state_dict())
    rest = sorted(k for k in keys if k not in out)
    if rest:
        seeded = record.get("weights") is None and not record.get("pretrained")
        cause = ("the builder's initialisation changed (another version of torch or of the "
                 "model's library?)" if seeded else "the weights changed since the run started")
        raise WeightsError(
            f"{what}: the starting weights from {_origin(record)} are not the ones run {str(run_dir)!r} "
            f"started from (SHA-256 differs from its {RunDir.START} for {len(rest)} tensors, e.g. "
            f"{', '.join(rest[:3])}): {cause}, so the start cannot be rebuilt exactly, and the "
            "run's checkpoint and best weights hold only what training changed; put back the "
            "weights it started from (model.safetensors, complete, still loads)")
    return out


def is_changed_only(path: str | Path) -> bool:
    """Whether a ``.safetensors`` run file holds only the tensors its run changed."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return CHANGED_ONLY in (fh.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return False  # read_weights says what is wrong with it


def complete_state(run_dir: str | Path, changed: Mapping[str, torch.Tensor],
                   keys: Collection[str], *, file: Path, have: Mapping[str, torch.Tensor] | None,
                   rebuild: bool, pm: ThawkitPluginManager | None, what: str) -> dict[str, torch.Tensor]:
    """``changed`` (tensors read from ``file``) completed to the model's ``keys`` with the
    starting values of the others; a key of ``changed`` that the model lacks is an error."""
    extra = sorted(set(changed) - set(keys))
    if extra:
        raise WeightsError(f"{file} holds tensors the model its recipe builds does not have "
                           f"({', '.join(extra[:3])}); it was changed, or the recipe was")
    rest = [k for k in keys if k not in changed]
    return {**start_tensors(run_dir, rest, have=have, rebuild=rebuild, pm=pm, what=what), **changed}
