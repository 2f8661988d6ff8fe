"""The ``text`` and ``audio`` data readers of ``thawkit train`` (``data.reader``), over :mod:`.data`.

* ``text``: ``data.train`` and ``data.val`` are CSV (header row) or JSON Lines files with the
  columns ``data.text_column`` and ``data.label_column``; texts are tokenized with the tokenizer
  saved in the backbone's directory (``transformers:DIR``), truncated to ``data.max_length``
  tokens, each batch padded to its longest text.
* ``audio``: ``data.train`` and ``data.val`` are folders with one sub-directory of WAV/FLAC files
  per class, read with soundfile, resampled to the rate of the feature extractor saved in the
  backbone's directory, each batch padded to its longest clip.

An export of such a run saves the tokenizer or feature extractor beside its weights
(``save_pretrained``), so its ``exported_batch`` gives ``predict``'s inputs without the backbone's
directory.

The classes are the training data's labels (sorted names). Batches are ``(inputs, labels)`` with
``inputs`` the model's keyword arguments; the model's ``.logits`` are the loop's logits. The
feature cache stays off: it splits a model that takes one image tensor.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError
from thawkit.plugins.train.readers import Reader, Splits, keyed_loaders
from thawkit.plugins.train.rundir import disk_errors

if TYPE_CHECKING:
    from thawkit import Recipe
    from thawkit.plugins.train.data import Loaders
    from torch import nn

CACHE_OFF = ("the feature cache splits a model that takes one image tensor; this model takes a "
             "mapping of inputs")


@dataclass
class Source:
    """One split as a reader found it: its file or folder and how many examples it holds."""

    path: str
    size: int

    def __len__(self) -> int:
        return self.size


def model_dir(recipe: Recipe, what: str) -> Path:
    """The backbone's ``save_pretrained`` directory, where the tokenizer or feature extractor is."""
    b = recipe.backbone
    path = Path(b.name).expanduser()
    if b.source != "transformers" or not path.is_dir():
        raise ConfigError(f"data.reader {recipe.data.reader}: the {what} comes from the backbone's "
                          f"directory, but backbone {b.spec} is no transformers: directory; use "
                          "backbone: transformers:DIR, a directory written by save_pretrained() "
                          f"holding the model's config and its {what}")
    return path.resolve()


def _auto(kind: str, path: str, what: str, recipe_reader: str) -> Any:
    from .source import _transformers

    transformers = _transformers()  # missing: a ConfigError naming the extra
    transformers.logging.set_verbosity_error()
    try:
        loaded = getattr(transformers, kind).from_pretrained(path, local_files_only=True)
        vocab = loaded.get_vocab() if hasattr(loaded, "get_vocab") else None
        if vocab is not None and set(vocab) <= set(loaded.all_special_tokens):
            # transformers 5 builds a tokenizer from config.json alone, every word unknown
            raise ValueError("only special tokens, no vocabulary: built from config.json alone")
        return loaded
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"data.reader {recipe_reader}: no {what} in {path!r} ({first}); save the "
                          f"model's {what} there with {what.replace(' ', '_')}.save_pretrained(DIR)"
                          ) from None


def _loaded(prep: Any, kind: str, path: str) -> Any:
    """``prep``'s tokenizer or feature extractor, read from ``path`` once (an export's transform
    prepares every input with it)."""
    cached = prep.__dict__.get("_loaded")
    if cached is None or cached[0] != path:
        cached = prep.__dict__["_loaded"] = (path, _auto(kind, path, prep.what, prep.reader))
    return cached[1]


def _split(field: str, read: Any) -> Any:
    """``read()``, its ConfigError prefixed with the recipe field it is about."""
    try:
        return read()
    except ConfigError as exc:
        raise ConfigError(f"{field}: {exc}") from None


def _required(recipe: Recipe) -> tuple[str, str]:
    d = recipe.data
    for field, value in (("data.train", d.train), ("data.val", d.val)):
        if not value:
            raise ConfigError(f"{field}: required with data.reader {d.reader}")
    return str(d.train), str(d.val)


class _Collate:
    """A padded batch of ``data`` (its own ``collate``) as ``(inputs, labels)``."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __call__(self, items: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
        import torch

        batch = dict(self.data.collate(items))
        return batch, torch.as_tensor(batch.pop("labels"))


class _MappingReader(Reader):
    """What the text and audio readers share: inputs are the model's keyword arguments."""

    cache_off = CACHE_OFF
    # layerdrop (wav2vec2, HuBERT, Whisper...) skips layers at random in training, as the HF
    # Trainer assumes for every transformers model
    skips_parameters = True

    def describe(self, data: Any) -> dict[str, Any]:
        return {"path": data.path, "examples": len(data)}

    def move(self, x: Any, device: Any) -> Any:
        nb = device.type == "cuda"
        return {k: v.to(device, non_blocking=nb) for k, v in x.items()}

    def forward(self, model: nn.Module, x: Any) -> Any:
        return model(**_accepted(model, x)).logits

    def shape(self, x: Any) -> tuple[int, ...]:
        return tuple(next(iter(x.values())).shape)

    #: the preprocessing's dataclass, and its field naming the directory it loads from
    prep_class: Any = None
    files: str = ""

    def preprocess_from_dict(self, recipe: Recipe | None, saved: dict[str, Any]) -> Any:
        return self.prep_class(**saved)

    def export_preprocess(self, prep: Any, folder: Path) -> dict[str, Any]:
        """The tokenizer or feature extractor saved into ``folder`` (``save_pretrained``), its
        path in the entry relative to the export's directory."""
        with disk_errors(f"save the {prep.what} of the export", folder):
            prep.load().save_pretrained(str(folder))
        return {**prep.to_dict(), self.files: folder.name}

    def preprocess_from_export(self, saved: dict[str, Any], directory: Path) -> Any:
        prep = self.prep_class(**saved)
        path = directory / getattr(prep, self.files)
        if not path.is_dir():
            raise ConfigError(f"the export's {prep.what} directory {str(path)!r} does not exist (it is "
                              f"saved beside the exported weights, {saved[self.files]!r} in the config, "
                              "relative to the export's directory); pass the config load_exported "
                              "returns, whose 'directory' says where the export is")
        setattr(prep, self.files, str(path))
        prep.load()  # a damaged directory fails here, not at the first input
        return prep


def _accepted(model: nn.Module, x: dict[str, Any]) -> dict[str, Any]:
    """The inputs ``model.forward`` takes (a tokenizer may give ``token_type_ids`` to a model
    without them)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return x
    return {k: v for k, v in x.items() if k in params}


# ------------------------------------------------------------------ text
@dataclass
class TextPreprocess:
    """The text reader's preprocessing, kept in the run's ``data.json``."""

    tokenizer: str
    text_column: str
    label_column: str
    max_length: int
    reader: str = "text"
    what = "tokenizer"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load(self) -> Any:
        return _loaded(self, "AutoTokenizer", self.tokenizer)


class TextReader(_MappingReader):
    """``text``: see the module docstring."""

    inputs = "texts"
    prep_class = TextPreprocess
    files = "tokenizer"

    def scan(self, recipe: Recipe) -> Splits:
        from .data import _label_ids, read_text_table

        d = recipe.data
        train_path, val_path = _required(recipe)
        _, train_labels = _split("data.train", lambda: read_text_table(train_path, d.text_column,
                                                                       d.label_column))
        _, val_labels = _split("data.val", lambda: read_text_table(val_path, d.text_column,
                                                                   d.label_column))
        _, classes = _label_ids(train_labels, None, train_path)
        _split("data.val", lambda: _label_ids(val_labels, classes, val_path))
        _check_num_classes(recipe, classes)
        notes = [f"data.train: {train_path!r} has a single label ({classes[0]!r})"] \
            if len(classes) == 1 else []
        return Splits(Source(train_path, len(train_labels)), Source(val_path, len(val_labels)),
                      classes, notes)

    def preprocess(self, recipe: Recipe, model: nn.Module) -> TextPreprocess:
        d = recipe.data
        prep = TextPreprocess(str(model_dir(recipe, "tokenizer")), d.text_column, d.label_column,
                              d.max_length)
        prep.load()  # a directory without a tokenizer fails here, before anything is written
        return prep

    def loaders(self, recipe: Recipe, splits: Splits, prep: Any, *, seed: int,
                pin_memory: bool) -> Loaders:
        from .data import TextClassificationData

        tokenizer = prep.load()
        data = [TextClassificationData(s.path, tokenizer, text=prep.text_column,
                                       label=prep.label_column, max_length=prep.max_length,
                                       classes=splits.classes) for s in (splits.train, splits.val)]
        return keyed_loaders(recipe, *data, splits.classes, seed=seed, pin_memory=pin_memory,
                             collate_fn=_Collate)

    def error_hint(self, recipe: Recipe, shape: tuple[int, ...]) -> str | None:
        return (f"a batch of {shape[0]} texts of {shape[-1]} tokens (data.max_length: "
                f"{recipe.data.max_length}); check data.max_length against the model's "
                "max_position_embeddings, and backbone.kwargs against the model's config")

    def predict_inputs(self, items: list[Any], prep: Any, recipe: Recipe | None) -> Any:
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ConfigError(f"text {i} is {type(item).__name__} {_short(item)}: the text reader "
                                  "takes texts, each a string")
        return dict(prep.load()(items, truncation=True, max_length=prep.max_length, padding=True,
                                return_tensors="pt"))

    def example(self, prep: Any, recipe: Recipe) -> Any:
        import torch

        tokenizer = prep.load()
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, len(tokenizer), (2, 8), generator=gen)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


# ------------------------------------------------------------------ audio
@dataclass
class AudioPreprocess:
    """The audio reader's preprocessing, kept in the run's ``data.json``."""

    feature_extractor: str
    sampling_rate: int
    reader: str = "audio"
    what = "feature extractor"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load(self) -> Any:
        return _loaded(self, "AutoFeatureExtractor", self.feature_extractor)


class AudioReader(_MappingReader):
    """``audio``: see the module docstring."""

    inputs = "audio files"
    prep_class = AudioPreprocess
    files = "feature_extractor"

    def scan(self, recipe: Recipe) -> Splits:
        from .data import scan_audio_folder

        train_path, val_path = _required(recipe)
        train = _split("data.train", lambda: scan_audio_folder(train_path))
        val = _split("data.val", lambda: scan_audio_folder(val_path, train.classes))
        _check_num_classes(recipe, train.classes)
        return Splits(Source(train_path, len(train.samples)), Source(val_path, len(val.samples)),
                      train.classes)

    def preprocess(self, recipe: Recipe, model: nn.Module) -> AudioPreprocess:
        path = str(model_dir(recipe, "feature extractor"))
        extractor = _auto("AutoFeatureExtractor", path, "feature extractor", "audio")
        return AudioPreprocess(path, int(extractor.sampling_rate))

    def loaders(self, recipe: Recipe, splits: Splits, prep: Any, *, seed: int,
                pin_memory: bool) -> Loaders:
        from .data import AudioClassificationData

        extractor = prep.load()
        data = [AudioClassificationData(s.path, extractor, classes=splits.classes)
                for s in (splits.train, splits.val)]
        return keyed_loaders(recipe, *data, splits.classes, seed=seed, pin_memory=pin_memory,
                             collate_fn=_Collate)

    def error_hint(self, recipe: Recipe, shape: tuple[int, ...]) -> str | None:
        return (f"a batch of {shape[0]} clips of {shape[-1]} values; check backbone.kwargs against "
                "the model's config and the feature extractor saved beside it")

    def predict_inputs(self, items: list[Any], prep: Any, recipe: Recipe | None) -> Any:
        import soundfile

        from .data import load_audio

        waves = []
        for i, item in enumerate(items):
            if not isinstance(item, (str, os.PathLike)):
                raise ConfigError(f"audio {i} is {type(item).__name__} {_short(item)}: the audio "
                                  "reader takes audio files, each a path (.wav, .flac)")
            if not Path(item).is_file():
                raise ConfigError(f"audio file {str(item)!r} does not exist")
            try:
                waves.append(load_audio(str(item), prep.sampling_rate))
            except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
                raise ConfigError(f"{item}: not a readable audio file ({exc})") from None
        return dict(prep.load()(waves, sampling_rate=prep.sampling_rate, padding=True,
                                return_tensors="pt"))

    def example(self, prep: Any, recipe: Recipe) -> Any:
        import numpy as np

        rng = np.random.default_rng(0)
        waves = [rng.standard_normal(prep.sampling_rate // 4).astype(np.float32) for _ in range(2)]
        return dict(prep.load()(waves, sampling_rate=prep.sampling_rate, padding=True,
                                return_tensors="pt"))


def _short(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_num_classes(recipe: Recipe, classes: list[str]) -> None:
    n = recipe.head.num_classes
    if n is not None and n != len(classes):
        raise ConfigError(f"head.num_classes is {n} but data.train {recipe.data.train!r} has "
                          f"{len(classes)} classes ({', '.join(classes[:10])}); set "
                          f"head.num_classes: {len(classes)} or leave it out to infer it")
