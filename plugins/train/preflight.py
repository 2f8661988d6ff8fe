"""Every check ``thawkit train`` makes before its first step, in one function that ``thawkit
plan`` runs too, so the plan is train's dry run: the same recipe fails both with the same message.

:func:`preflight` scans the data folders (class count, empty folders, image headers), opens the
weights file's header, builds the model on the meta device and runs one forward pass of the
data's input shape through it (no memory, no arithmetic); the data itself is the recipe's data
reader's business (``data.reader``, :mod:`.readers`). :func:`~.model_input.model_error` words an
exception the model raises on its input, here or in the middle of a run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError, WeightsError

from .model_input import ModelInputError, check_forward, meta_limitation, model_error
from .readers import Reader, reader_for

__all__ = ["ModelInputError", "Preflight", "check_forward", "check_weights", "meta_limitation",
           "model_error", "preflight", "random_backbone_warnings"]

if TYPE_CHECKING:
    from thawkit import Adapted, Recipe


@dataclass
class Preflight:
    """What the checks found: the training and validation data (None without data), the class
    count, the preprocessing, the data reader (``data.reader``) and the warnings to show when
    the run starts."""

    train: Any
    val: Any
    num_classes: int | None
    prep: Any
    reader: Reader
    warnings: list[str] = field(default_factory=list)
    classes: list[str] | None = None  # the class names of the data (None without data)


def preflight(recipe: Recipe, *, data: bool = True,
              prep: dict[str, Any] | None = None) -> Preflight:
    """Run train's checks before its first step; a :class:`~thawkit.ThawkitError` for the first
    that fails. ``data=False`` (``thawkit plan --no-data``) leaves out the data (files, columns,
    headers); ``prep``: the preprocessing a resumed run keeps, as its ``data.json`` holds it
    (else resolved from the model and recipe). The recipe's ``data.reader`` reads the data."""
    from thawkit import adapt_recipe

    if recipe.optimizer.lr_scale:
        raise ConfigError("optimizer.lr_scale: true is timm's form, for your own loop that sets "
                          "lr = base * lr_scale; thawkit train's schedules scale each group's lr "
                          "(the multipliers baked in), so leave optimizer.lr_scale false")
    reader = reader_for(recipe)
    n = recipe.head.num_classes
    splits = reader.scan(recipe) if data else None
    if splits is not None:
        n = len(splits.classes)
    check_weights(recipe)
    twin = adapt_recipe(recipe, meta=True, num_classes=n)
    resolved = reader.preprocess_from_dict(recipe, prep) if prep is not None else \
        reader.preprocess(recipe, twin.model)
    notes = list(splits.warnings) if splits is not None else []
    notes += random_backbone_warnings(recipe, twin)  # before the forward pass moves its phases on
    if splits is not None or recipe.data.model_fields_set:
        # a recipe without a data section (a model-only plan) states no input to check the model on
        reader.check_forward(recipe, twin, resolved, None if splits is None else len(splits.train))
    if splits is None:
        return Preflight(None, None, n, resolved, reader, notes)
    return Preflight(splits.train, splits.val, n, resolved, reader, notes, splits.classes)


# ------------------------------------------------------------------ weights
def check_weights(recipe: Recipe) -> None:
    """An existing weights file: its header (cheap for safetensors). A name that is no file: the
    source decides on the meta device (torchvision takes ``DEFAULT``, timm refuses it)."""
    from thawkit import load_backbone

    from ..weights import check_weights_header

    weights = recipe.backbone.weights
    if not isinstance(weights, str):
        return
    try:
        if is_file(weights):
            check_weights_header(weights)
        else:
            options = {**recipe.backbone.load_options(), "device": "meta"}
            options.pop("pretrained", None)
            load_backbone(recipe.backbone.spec, pm=recipe.plugin_manager, **options)
    except WeightsError as exc:
        if "backbone.weights" in str(exc):
            raise
        raise WeightsError(f"backbone.weights: {exc}") from None


def is_file(path: str) -> bool:
    """``Path.is_file`` that takes any string (a name too long for a file, a NUL byte)."""
    try:
        return Path(path).expanduser().is_file()
    except (OSError, ValueError):
        return False


# ------------------------------------------------------------------ warnings
#: sources whose models start from random weights unless ``weights``/``pretrained`` say otherwise
#: (a ``python:`` factory loads whatever weights it likes)
RANDOM_WITHOUT_WEIGHTS_EXCEPT = ("python",)
#: sources that take their published weights with ``pretrained: true`` (not ``weights: DEFAULT``)
PRETRAINED_BY_FLAG = ("timm", "transformers")


def random_backbone_warnings(recipe: Recipe, adapted: Adapted) -> list[str]:
    """A freezing strategy on a backbone that starts from random weights trains to chance."""
    b = recipe.backbone
    if b.weights or b.pretrained or b.random_init_ok or b.source in RANDOM_WITHOUT_WEIGHTS_EXCEPT:
        return []
    head = set(adapted.layout.head.params)
    body = [(n, p) for n, p in adapted.model.named_parameters() if n not in head]
    total = sum(p.numel() for _, p in body)
    frozen = sum(p.numel() for _, p in body if not p.requires_grad)
    if not total or frozen * 2 < total:
        return []
    by_flag = b.source in PRETRAINED_BY_FLAG
    unset = "backbone.weights: null" + (", backbone.pretrained: false" if by_flag else "")
    named = "backbone.pretrained: true" if by_flag else "backbone.weights: DEFAULT or a file"
    return [f"{b.spec} starts from random weights ({unset}), and strategy {recipe.strategy.name} "
            f"keeps {100 * frozen // total}% of them frozen from the first epoch: a frozen random "
            f"backbone trains to chance; name pretrained weights ({named}), use strategy full, or "
            "set backbone.random_init_ok: true if you mean it"]
