"""The ``transformers:`` source: a ``save_pretrained`` directory, a cached hub name, or a model type.

``transformers:NAME`` builds the model through transformers' Auto classes, never downloading:

* ``NAME`` is a directory with a ``config.json`` (``save_pretrained``), a hub name already in
  the local Hugging Face cache (read with ``local_files_only=True``), or a model type
  (``bert``, ``llama``, ``wav2vec2``...) whose default config is the starting point;
* ``pretrained=True`` reads the weights of the directory or cached name; without it the model
  is built from its config alone, randomly initialised (``weights: null``);
* ``weights=FILE`` loads a local ``.safetensors``/``.pth`` state dict into that model;
* ``task`` picks the Auto class: ``sequence-classification``, ``audio-classification``,
  ``ctc``, ``causal-lm``, ``image-classification``, ``speech-seq2seq`` or ``base``; without it,
  the class the directory was saved from (``config.architectures``), else ``base``;
* every other option overrides a config field (``hidden_size``, ``num_hidden_layers``,
  ``num_labels``...), as ``backbone.kwargs`` in a recipe.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError, UnknownNameError

if TYPE_CHECKING:
    from torch import nn

#: task name -> transformers Auto class (resolved by name, so nothing is imported here)
TASKS: dict[str, str] = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "audio-classification": "AutoModelForAudioClassification",
    "ctc": "AutoModelForCTC",
    "causal-lm": "AutoModelForCausalLM",
    "image-classification": "AutoModelForImageClassification",
    "speech-seq2seq": "AutoModelForSpeechSeq2Seq",
    "base": "AutoModel",
}
EXTRA = "pip install 'thawkit[transformers]'"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"the transformers: source needs Hugging Face transformers: {EXTRA}") from None
    return transformers


def tasks_of(config: Any) -> list[str]:
    """The tasks whose Auto class has a model for ``config``'s class."""
    tf = _transformers()
    return [task for task, auto in TASKS.items() if type(config) in getattr(tf, auto)._model_mapping]


def cached_config(name: str) -> str | None:
    """Path of ``name``'s ``config.json`` in the local hub cache, or ``None``."""
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - not a valid repo id: not cached
        return None
    return found if isinstance(found, str) else None


def load_config(name: str, overrides: dict[str, Any], where: str) -> tuple[Any, str]:
    """The config of ``name`` with ``overrides``, and what ``name`` was (directory, cache, type)."""
    tf = _transformers()
    from thawkit.plugins._builders import builder_errors

    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{where}: directory {str(path)!r} has no config.json; give a directory "
                              "written by save_pretrained(), a cached hub name or a model type")
        kind, ref = "directory", str(path)
    elif cached_config(name) is not None:
        kind, ref = "cache", name
    elif name in tf.CONFIG_MAPPING:
        with builder_errors(f"transformers:{name}", overrides, "config"):
            return tf.AutoConfig.for_model(name, **overrides), "type"
    else:
        raise UnknownNameError(
            "transformers model (a save_pretrained directory, a hub name in the local cache, or a "
            "model type; thawkit never downloads: fetch it first with `hf download NAME`)",
            name, list(tf.CONFIG_MAPPING.keys()), where=where)
    with builder_errors(f"transformers:{name}", overrides, "config"):
        config = tf.AutoConfig.from_pretrained(ref, local_files_only=True, **overrides)
    return config, kind


def model_class(config: Any, task: str | None, name: str, where: str) -> Any:
    """The class that builds ``config`` for ``task`` (the saved architecture when ``task`` is None)."""
    tf = _transformers()
    if task is None:
        saved = [a for a in (getattr(config, "architectures", None) or []) if hasattr(tf, a)]
        if saved:
            return getattr(tf, saved[0])
        task = "base"
    if task not in TASKS:
        raise UnknownNameError("transformers task", task, list(TASKS), where=f"{where}: task")
    auto = getattr(tf, TASKS[task])
    if type(config) not in auto._model_mapping:
        have = tasks_of(config)
        raise ConfigError(f"{where}: {name} (model type {config.model_type!r}) has no {task} head; "
                          f"its tasks are {', '.join(have) or 'none thawkit knows'}")
    return auto._model_mapping[type(config)]


class TransformersSource:
    """``transformers:NAME``: see the module docstring."""

    description = ("Hugging Face transformers: a save_pretrained directory, a cached hub name or a "
                   "model type; task=..., pretrained=True, config overrides")
    #: a name may be a directory: a run's recipe keeps it absolute, so --resume works from anywhere
    local_names = True

    def list_models(self, pattern: str | None = None) -> list[str]:
        """Model types (build from a config), and hub names in the local cache."""
        import fnmatch

        tf = _transformers()
        names = list(tf.CONFIG_MAPPING.keys())
        with contextlib.suppress(Exception):  # no cache yet, or an unreadable one: types only
            from huggingface_hub import scan_cache_dir
            names += sorted(r.repo_id for r in scan_cache_dir().repos if r.repo_type == "model")
        names = list(dict.fromkeys(names))
        return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]

    def load(self, name: str, options: dict[str, Any]) -> nn.Module:
        import torch

        from thawkit.plugins._builders import builder_errors, weight_options

        opts = dict(options)
        task = opts.pop("task", None)
        where = f"backbone 'transformers:{name}'"
        pretrained, weights, device = weight_options(opts, where)
        config, kind = load_config(name, opts, where)
        cls = model_class(config, task, name, where)
        meta = str(device) == "meta"
        if pretrained and kind == "type":
            raise ConfigError(f"{where}: {name!r} is a model type, which has no weights; give a "
                              "save_pretrained directory or a cached hub name with pretrained=True")
        with builder_errors(f"transformers:{name}", opts, "model"):
            if pretrained and not meta:
                model = cls.from_pretrained(name if kind == "cache" else str(Path(name).expanduser()),
                                            config=config, local_files_only=True)
            else:
                with torch.device("meta") if meta else contextlib.nullcontext():
                    model = cls(config) if not hasattr(cls, "_from_config") else cls._from_config(config)
        if weights is not None:
            from thawkit.plugins.weights import apply_weights, read_weights

            apply_weights(model, read_weights(weights), file=str(weights), head_prefixes=[])
        if device is not None and not meta:
            model.to(device)
        return model
