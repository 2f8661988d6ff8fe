"""Use a finished run: rebuild its model, predict classes for its inputs, export standalone weights.

An export is a ``.safetensors`` file plus a JSON config (also embedded in the
file's metadata) holding the backbone spec and the ``load_backbone`` options
that rebuild the architecture, so the weights load with thawkit alone::

    config = json.load(open("digits.json"))
    model = thawkit.load_backbone(config["spec"], weights="digits.safetensors",
                                  **config["load_options"])

Export checks this round trip before writing: the rebuilt model must give the
trained model's logits. The config also names the run's data reader and its
preprocessing; files that preprocessing reads (a text run's tokenizer) are saved
beside the weights, so :func:`exported_transform` and :func:`exported_batch` prepare
``predict``'s inputs from the export alone.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError, ThawkitError, load_backbone

from ..interpolation import check_alpha
from .adapter_export import export_adapters, has_adapters, merge_run
from .checkpoint import read_jsonl, save_weights, write_json
from .rundir import RunDir, disk_errors
from .run_model import load_run_model, plain_head
from .wise import interpolate_run

if TYPE_CHECKING:
    from thawkit import ThawkitPluginManager
    from torch import nn

# torch and safetensors are imported inside the functions that use them: `thawkit predict` and
# `export` import this module before they check their arguments.

EXPORT_FORMAT = "thawkit-export/1"


class ExportError(ThawkitError):
    """The exported weights would not rebuild the trained model."""

def predict(run_dir: str | Path, images: list[str], *, top_k: int = 5, best: bool = False,
            pm: ThawkitPluginManager | None = None,
            trust: bool = False) -> list[tuple[str, list[tuple[str, float]]]]:
    """For each input (image files; for other data readers, what their ``inputs`` say: texts, audio
    files), the ``top_k`` classes by name with their probabilities, best first (``trust``: as in
    :func:`load_run_model`)."""
    import torch

    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    run = load_run_model(run_dir, best=best, pm=pm, trust=trust, command="predict")
    if not images:
        raise ConfigError(f"predict: name at least one of the run's inputs ({run.reader.inputs})")
    x = run.reader.predict_inputs(list(images), run.prep, run.recipe)
    with torch.no_grad():
        probs = run.reader.forward(run.model, x).float().softmax(dim=1)
    if not bool(probs.isfinite().all()):
        raise ThawkitError(f"predict: {run.weights} gives NaN or infinite outputs for these images; "
                           "the run diverged (retrain with a lower optimizer.lr)")
    k = min(top_k, len(run.classes))
    values, indices = probs.topk(k, dim=1)
    return [(file, [(run.classes[i], float(p)) for p, i in zip(v.tolist(), ix.tolist())])
            for file, v, ix in zip(images, values, indices)]


def _export_paths(out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    if out.suffix == ".safetensors":
        return out, out.with_suffix(".json")
    return out / "model.safetensors", out / "config.json"


def export_run(run_dir: str | Path, out: str | Path, *, best: bool = False, force: bool = False,
               merge: bool = False, pm: ThawkitPluginManager | None = None,
               wise: float | None = None, trust: bool = False) -> tuple[Path, Path]:
    """Write standalone weights and their config; returns ``(weights_path, config_path)``.

    ``out``: a ``.safetensors`` path (config beside it, ``.json``) or a directory
    (``model.safetensors`` and ``config.json`` inside); never one of the run's own files.
    ``trust``: as in :func:`load_run_model`. ``wise``: WiSE-FT, the backbone
    interpolated with the run's starting weights at this alpha (:mod:`.wise`). A run with
    adapters (``lora``, ...) writes them in PEFT's format into the directory ``out`` (see
    :func:`thawkit.plugins.train.adapter_export.export_adapters`), or, with ``merge=True``,
    merged into the base layers as plain weights, checked against the adapter model's logits.
    """
    if wise is not None:
        wise = check_alpha(wise, "export --wise")
    weights_path, config_path = _export_paths(out)
    _check_not_run_file(Path(run_dir), weights_path, config_path)
    for parent in (weights_path.parent, *weights_path.parent.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ConfigError(f"export: cannot write {str(weights_path)!r}: {str(parent)!r} is "
                                  "not a directory")
            break
    existing = [str(p) for p in (weights_path, config_path) if p.exists()]
    if existing and not force:
        raise ConfigError(f"export: {', '.join(existing)} already exist{'s' if len(existing) == 1 else ''};"
                          " choose another OUT or pass --force to overwrite")

    run = load_run_model(run_dir, best=best, pm=pm, trust=trust, command="export")
    if wise is not None:
        interpolate_run(run, run_dir, wise)
    recipe = run.recipe
    # the files the preprocessing reads (a tokenizer): OUT/preprocess, or NAME.preprocess
    files = weights_path.with_suffix(".preprocess") if Path(out).suffix == ".safetensors" \
        else Path(out) / "preprocess"
    with _staged(files) as stage:
        options = {**recipe.backbone.kwargs, "num_classes": len(run.classes)}
        config = {"format": EXPORT_FORMAT, "spec": recipe.backbone.spec, "load_options": options,
                  "classes": run.classes, "reader": getattr(recipe.data, "reader", "images"),
                  "preprocess": run.reader.export_preprocess(run.prep, stage),
                  "source_run": str(Path(run_dir)), "source_weights": run.weights.name,
                  "epochs": len(read_jsonl(RunDir(run_dir).metrics)),
                  **({"wise_alpha": float(wise)} if wise is not None else {})}
        if stage.exists() and (files.exists() or files.is_symlink()) and not force:
            raise ConfigError(f"export: {files} already exists; choose another OUT or pass --force "
                              "to overwrite")
        if has_adapters(run.model) and not merge:
            return export_adapters(run, out, config, force=force)
        return _export_weights(run, config, weights_path, config_path, merge)


def _export_weights(run: Any, config: dict[str, Any], weights_path: Path, config_path: Path,
                    merge: bool) -> tuple[Path, Path]:
    """The plain (or merged) weights and their config, written once the rebuilt model is checked."""
    import torch

    recipe, options = run.recipe, config["load_options"]
    reference = merge_run(run) if merge else run.model   # merge: a copy of the unmerged model
    state = plain_head(run.model, run.layout, run.model.state_dict())
    with disk_errors("create the export directory", weights_path.parent):
        weights_path.parent.mkdir(parents=True, exist_ok=True)
    trial = weights_path.with_name(f".{weights_path.stem}.check.safetensors")
    save_weights(trial, state, metadata={"thawkit_export": json.dumps(config)})
    try:
        try:
            rebuilt = load_backbone(config["spec"], pm=recipe.plugin_manager, weights=str(trial), **options)
        except ThawkitError as exc:
            raise ExportError(f"export: thawkit.load_backbone({config['spec']!r}, weights=..., "
                              f"{', '.join(f'{k}={v!r}' for k, v in options.items())}) cannot rebuild "
                              f"this run's model: {exc}") from None
        rebuilt.eval()
        x = run.reader.example(run.prep, recipe)
        with torch.no_grad():
            same = torch.allclose(run.reader.forward(rebuilt, x), run.reader.forward(reference, x),
                                  rtol=1e-5, atol=1e-5 if merge else 1e-6)
        if not same:
            raise ExportError(f"export: the model that load_backbone({config['spec']!r}) rebuilds "
                              "from the exported weights gives other logits than the trained model")
        with disk_errors("write", weights_path):
            trial.replace(weights_path)
    finally:
        trial.unlink(missing_ok=True)
    write_json(config_path, config)
    return weights_path, config_path


@contextlib.contextmanager
def _staged(folder: Path) -> Iterator[Path]:
    """A place for the files an export's preprocessing reads (:meth:`Reader.export_preprocess`):
    a path named as ``folder``, in a hidden directory beside it; moved to ``folder`` when the
    export succeeds (replacing it: the caller checks ``--force``), removed when it fails. A
    reader that saves no files leaves ``folder`` as it was."""
    import shutil

    hidden = folder.with_name(f".{folder.name}.tmp")
    try:
        yield hidden / folder.name
        if (hidden / folder.name).exists():
            if folder.exists() or folder.is_symlink():  # the caller checked --force
                with disk_errors("replace", folder):
                    shutil.rmtree(folder) if folder.is_dir() and not folder.is_symlink() \
                        else folder.unlink()
            with disk_errors("write", folder):
                (hidden / folder.name).replace(folder)
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


def _check_not_run_file(run_dir: Path, *targets: Path) -> None:
    """Export never writes over a file of a run directory (its own or another run's)."""
    for target in targets:
        parent = target.parent
        try:
            same_dir = parent.is_dir() and (parent.resolve() == run_dir.resolve()
                                            or RunDir(parent).checkpoint.is_file())
        except OSError:
            continue
        if same_dir and target.name in RunDir.FILES:
            raise ConfigError(f"export: {str(target)!r} is a file of the run directory "
                              f"{str(parent)!r}; export to a path outside it (--force never "
                              "overwrites a run's own files)")


def load_exported(path: str | Path, *, pm: ThawkitPluginManager | None = None) -> tuple[nn.Module, dict]:
    """Rebuild an exported model from its ``.safetensors`` file; returns ``(model, config)``: the
    model in eval mode, and the export's config from the file's metadata (``spec``,
    ``load_options``, ``classes``, ``reader``, ``preprocess``, ...: the JSON written beside the
    file) with ``directory``, the export's directory, added. :func:`exported_transform` and
    :func:`exported_batch` turn the config into the inputs ``predict`` gives the model.

    Example::

        model, config = load_exported("digits.safetensors")
        transform = exported_transform(config)
        logits = model(transform("seven.png")[None])
        print(config["classes"][int(logits.argmax())])
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"exported weights {str(path)!r} do not exist")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "thawkit_export" not in meta:
        raise ConfigError(f"{str(path)!r} is not a thawkit export (no thawkit_export metadata)")
    config = json.loads(meta["thawkit_export"])
    model = load_backbone(config["spec"], pm=pm, weights=str(path), **config["load_options"])
    return model.eval(), {**config, "directory": str(path.resolve().parent)}


def exported_transform(config: dict[str, Any], *,
                       pm: ThawkitPluginManager | None = None) -> Callable[[Any], Any]:
    """The preprocessing of an export (its ``config``, as :func:`load_exported` returns it) for
    one input, exactly as ``thawkit predict`` applies it, through the data reader that made
    the run (``config["reader"]``):

    * ``images``: ``transform(image)`` takes an image file's path or a PIL image (converted to
      RGB) and returns a ``3 x H x W`` tensor (resize, centre crop, normalise); ``torch.stack``
      several for a batch, and call ``model(batch)``;
    * ``text`` and ``audio`` (the transformers plugin): ``transform(text)`` or
      ``transform(audio_file)`` returns the model's keyword inputs for a batch of one
      (``input_ids`` and ``attention_mask``; ``input_values``): ``model(**inputs).logits``.
      Several of them make a batch only padded to one length: :func:`exported_batch` does that.

    A config without a valid ``preprocess`` entry, or of a reader no loaded plugin registers,
    is a ConfigError; so is an input the reader does not take."""
    reader, prep = _exported_reader(config, pm, "exported_transform")
    return _prefixed(reader.transform(prep), "exported_transform")


def exported_batch(config: dict[str, Any], *,
                   pm: ThawkitPluginManager | None = None) -> Callable[[Sequence[Any]], Any]:
    """The preprocessing of an export for a batch: ``batch(items)`` takes a list of inputs
    (image paths or PIL images, texts, audio files) and returns the model's inputs exactly as
    ``thawkit predict`` builds them for those items: an ``N x 3 x H x W`` tensor for images
    (``model(batch)``); for text and audio, the model's keyword inputs padded to the longest
    item, with their attention mask where the model takes one (``model(**batch).logits``)."""
    reader, prep = _exported_reader(config, pm, "exported_batch")

    def batch(items: Sequence[Any]) -> Any:
        if isinstance(items, (str, bytes, Path)) or not isinstance(items, Sequence):
            raise ConfigError(f"give a list of inputs, not {type(items).__name__} (one input: "
                              "exported_transform)")
        if not items:
            raise ConfigError("no inputs (an empty list)")
        return reader.predict_inputs(list(items), prep, None)
    return _prefixed(batch, "exported_batch")


def _prefixed(prepare: Callable[[Any], Any], what: str) -> Callable[[Any], Any]:
    """``prepare``, its ConfigError (an input the reader does not take) prefixed with ``what``."""
    def apply(x: Any) -> Any:
        try:
            return prepare(x)
        except ConfigError as exc:
            raise ConfigError(f"{what}: {exc}") from None
    return apply


def _exported_reader(config: dict[str, Any], pm: ThawkitPluginManager | None,
                     what: str) -> tuple[Any, Any]:
    """The reader that made an export (``config["reader"]``; older configs: the one its
    preprocessing names, else ``images``) and the export's preprocessing."""
    from thawkit import get_plugin_manager

    from .readers import reader_registry

    saved = config.get("preprocess") if isinstance(config, dict) else None
    if not isinstance(saved, dict):
        raise ConfigError(f"{what}: the config has no valid 'preprocess' entry; pass the config "
                          "load_exported returns")
    name = config.get("reader", saved.get("reader", "images"))
    registry = reader_registry(pm or get_plugin_manager())
    if not isinstance(name, str) or name not in registry:
        from thawkit import UnknownNameError

        unknown = UnknownNameError("data reader", str(name), registry.names(),
                                   where=f"{what}: config['reader']")
        raise ConfigError(f"{unknown}; each comes from a plugin: load the one the run used (text "
                          "and audio: pip install 'thawkit[transformers]')")
    reader = registry.get(name)
    try:
        return reader, reader.preprocess_from_export(saved, Path(config.get("directory", ".")))
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{what}: the config has no valid 'preprocess' entry for the data reader "
                          f"{name!r} ({type(exc).__name__}: {exc}); pass the config load_exported "
                          "returns") from None
