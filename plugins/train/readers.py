"""Data readers: how ``thawkit train``, ``plan`` and ``predict`` read a recipe's data.

A reader is chosen by name in ``data.reader`` (default ``images``) among those plugins
register through ``thawkit_register_readers`` (:mod:`.hookspecs`). The training loop never
branches on the kind of data: everything that depends on it goes through the reader, which
scans the data (the checks ``thawkit plan`` makes too), builds the loaders, moves a batch's
inputs to the device, runs the model on them, and prepares ``predict``'s inputs.

:class:`ImageReader` (``images``) is the ImageFolder reader of :mod:`.data`; the transformers
plugin registers ``text`` and ``audio``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError

from .data import (
    Loaders,
    Preprocess,
    build_loaders,
    check_classes,
    data_warnings,
    image_transform,
    preprocess_images,
    scan_folder,
)
from .model_input import check_forward

if TYPE_CHECKING:
    from thawkit import Adapted, Recipe, Registry, ThawkitPluginManager
    from torch import nn


@dataclass
class Splits:
    """What a reader's scan found: the training and validation data (objects with ``len()``),
    the class names (from the training data) and warnings to show when the run starts."""

    train: Any
    val: Any
    classes: list[str]
    warnings: list[str] = field(default_factory=list)


class Reader:
    """The base of data readers; the methods below are what the training plugin calls.

    ``cache_off``: why the feature cache of frozen-prefix features is not exact for this
    reader's data (``None``: it may be, and :mod:`.cache` decides phase by phase).
    ``inputs``: what ``thawkit predict`` takes (for its messages), e.g. ``image files``.
    ``skips_parameters``: whether a training forward may leave a trainable parameter out (a
    layer skipped at random, as wav2vec2's ``layerdrop``); under DDP each step then looks for
    the parameters left out (``find_unused_parameters``) instead of failing on the next step.
    """

    cache_off: str | None = None
    inputs: str = "inputs"
    skips_parameters: bool = False

    def scan(self, recipe: Recipe) -> Splits:
        """Read and check ``data.train`` and ``data.val``; a ConfigError naming the file at fault."""
        raise NotImplementedError

    def count_classes(self, recipe: Recipe, where: str) -> int:
        """The number of classes in ``data.train`` (``head.num_classes`` left out): by default
        those :meth:`scan` finds."""
        return len(self.scan(recipe).classes)

    def preprocess(self, recipe: Recipe, model: nn.Module) -> Any:
        """The resolved preprocessing: an object with ``to_dict()`` (kept in ``data.json``)."""
        raise NotImplementedError

    def preprocess_from_dict(self, recipe: Recipe | None, saved: dict[str, Any]) -> Any:
        """The preprocessing a run kept in its ``data.json`` (resume, predict); ``recipe`` is
        ``None`` for an export's (:meth:`preprocess_from_export`)."""
        raise NotImplementedError

    def check_forward(self, recipe: Recipe, twin: Adapted, prep: Any, n_train: int | None) -> None:
        """Before the first step: can the model run on this data's input (a meta-device twin)?"""

    def loaders(self, recipe: Recipe, splits: Splits, prep: Any, *, seed: int,
                pin_memory: bool) -> Loaders:
        raise NotImplementedError

    def describe(self, data: Any) -> dict[str, Any]:
        """One split as ``data.json`` records it."""
        return {"items": len(data)}

    def move(self, x: Any, device: Any) -> Any:
        """A batch's inputs on ``device``."""
        return x.to(device, non_blocking=device.type == "cuda")

    def forward(self, model: nn.Module, x: Any) -> Any:
        """The model's logits for the inputs ``x``."""
        return model(x)

    def shape(self, x: Any) -> tuple[int, ...]:
        """The shape of a batch's inputs, for messages."""
        return tuple(x.shape)

    def error_hint(self, recipe: Recipe, shape: tuple[int, ...]) -> str | None:
        """What to change when the model raises on a batch of inputs of ``shape`` (None: the
        image size's fields, as for images)."""
        return None

    def predict_inputs(self, items: list[Any], prep: Any, recipe: Recipe | None) -> Any:
        """``thawkit predict``'s arguments as one batch of inputs; ``recipe`` is ``None`` for an
        export's inputs (``exported_batch``: an export has no recipe)."""
        raise NotImplementedError

    def transform(self, prep: Any) -> Callable[[Any], Any]:
        """``exported_transform``: one item to the model's inputs for it, as predict prepares
        it; by default a batch of one (:meth:`predict_inputs`)."""
        return lambda item: self.predict_inputs([item], prep, None)

    def example(self, prep: Any, recipe: Recipe) -> Any:
        """Two random inputs of the data's shape (export checks its round trip with them)."""
        raise NotImplementedError

    def export_preprocess(self, prep: Any, folder: Path) -> dict[str, Any]:
        """An export's ``preprocess`` entry: what :meth:`preprocess_from_export` needs to prepare
        inputs without the recipe or the run (by default ``prep.to_dict()``). Files the
        preprocessing reads (a tokenizer) are saved into ``folder``, a sub-directory of the
        export's directory that does not exist yet, and recorded by its name, so that the
        export serves without the directories the run read them from."""
        return prep.to_dict()

    def preprocess_from_export(self, saved: dict[str, Any], directory: Path) -> Any:
        """The preprocessing an export recorded (:meth:`export_preprocess`), its relative paths
        resolved against the export's ``directory``; by default :meth:`preprocess_from_dict`
        without a recipe. Raise ConfigError, KeyError, TypeError or ValueError for a damaged
        entry."""
        return self.preprocess_from_dict(None, saved)


class ImageReader(Reader):
    """``images``: ImageFolder directories (:mod:`.data`), transforms from the backbone's data
    config and the recipe; the feature cache applies."""

    inputs = "image files"

    def scan(self, recipe: Recipe) -> Splits:
        train = scan_folder(recipe.data.train, "data.train")
        val = scan_folder(recipe.data.val, "data.val")
        check_classes(train, val, recipe.head.num_classes)
        return Splits(train, val, train.classes, data_warnings(train, val))

    def count_classes(self, recipe: Recipe, where: str) -> int:
        """Class folders in ``data.train`` (no image is read)."""
        folder = Path(recipe.data.train or "")
        if not folder.is_dir():
            raise ConfigError(f"{where}: data.train: directory {recipe.data.train!r} does not exist "
                              "(needed to infer head.num_classes; or set head.num_classes)")
        return sum(1 for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def preprocess(self, recipe: Recipe, model: nn.Module) -> Preprocess:
        from thawkit import data_config

        return Preprocess.resolve(data_config(model, pm=recipe.plugin_manager), recipe.data)

    def preprocess_from_dict(self, recipe: Recipe | None, saved: dict[str, Any]) -> Preprocess:
        return Preprocess.from_dict(saved)

    def check_forward(self, recipe: Recipe, twin: Adapted, prep: Any, n_train: int | None) -> None:
        check_forward(recipe, twin, prep.image_size, n_train=n_train)

    def loaders(self, recipe: Recipe, splits: Splits, prep: Any, *, seed: int,
                pin_memory: bool) -> Loaders:
        return build_loaders(splits.train, splits.val, prep, batch_size=recipe.data.batch_size,
                             num_workers=recipe.data.num_workers, seed=seed, pin_memory=pin_memory)

    def describe(self, data: Any) -> dict[str, Any]:
        return {"dir": str(data.root), "images": len(data)}

    def predict_inputs(self, items: list[Any], prep: Any, recipe: Recipe | None) -> Any:
        return preprocess_images(items, prep)

    def transform(self, prep: Any) -> Callable[[Any], Any]:
        """An image file's path or a PIL image to a ``3 x H x W`` tensor."""
        return image_transform(prep)

    def example(self, prep: Any, recipe: Recipe) -> Any:
        import torch

        gen = torch.Generator().manual_seed(0)
        return torch.randn(2, 3, prep.image_size, prep.image_size, generator=gen)


class _Keyed:
    """A dataset indexed as the training batches ask: ``(epoch, index)`` keys, or plain indices."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: Any) -> Any:
        return self.data[key[1] if isinstance(key, tuple) else key]


def keyed_loaders(recipe: Recipe, train: Any, val: Any, classes: list[str], *, seed: int,
                  pin_memory: bool, collate_fn: Any = None) -> Loaders:
    """:class:`~.data.Loaders` over two map-style datasets (``data[i]`` is one example): the
    training order is epoch ``e``'s seeded permutation (:class:`~.data.EpochBatches`, so a run
    resumes mid-epoch exactly), validation in order, ``data.batch_size`` and
    ``data.num_workers`` from the recipe; ``collate_fn`` makes an ``(inputs, labels)`` batch
    (default: torch's, for ``(tensor, label)`` examples)."""
    import torch
    from torch.utils.data import DataLoader

    from .data import EpochBatches, _worker_init

    batches = EpochBatches(len(train), recipe.data.batch_size, seed)
    workers = recipe.data.num_workers
    common = {"num_workers": workers, "pin_memory": pin_memory,
              "worker_init_fn": _worker_init if workers else None,
              "generator": torch.Generator().manual_seed(seed)}
    train_loader = DataLoader(_Keyed(train), batch_sampler=batches,
                              collate_fn=None if collate_fn is None else collate_fn(train), **common)
    val_loader = DataLoader(_Keyed(val), batch_size=recipe.data.batch_size, shuffle=False,
                            collate_fn=None if collate_fn is None else collate_fn(val), **common)
    return Loaders(train_loader, val_loader, batches, classes)


def read_reader(name: str, reader: Any) -> tuple[str, Any]:
    """``register(name, reader)``: a :class:`Reader` (or an object with its methods)."""
    missing = [m for m in ("scan", "preprocess", "loaders", "forward")
               if not callable(getattr(reader, m, None))]
    if missing:
        raise TypeError(f"data reader {name!r} has no {', '.join(missing)} method "
                        "(subclass thawkit.plugins.train.readers.Reader)")
    return name, reader


def reader_registry(pm: ThawkitPluginManager) -> Registry:
    """Data readers by name, from every plugin's ``thawkit_register_readers``."""
    return pm.registry("thawkit_register_readers", "data reader", read_reader)


def reader_for(recipe: Recipe) -> Reader:
    """The reader ``data.reader`` names (an unknown name is an error naming the field)."""
    name = getattr(recipe.data, "reader", "images")
    return reader_registry(recipe.plugin_manager).get(name, where="data.reader")

