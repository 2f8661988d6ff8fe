"""Every check ``thawkit train`` makes before its first step, in one function that ``thawkit
plan`` runs too, so the plan is train's dry run: the same recipe fails both with the same message.

:func:`preflight` scans the data folders (class count, empty folders, image headers), opens the
weights file's header, builds the model on the meta device and runs one forward pass of the
data's input shape through it (no memory, no arithmetic). :func:`model_error` words an exception
the model raises on its input, here or in the middle of a run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from thawkit import ConfigError, ThawkitError, WeightsError

from .data import ImageFolderData, Preprocess, check_classes, data_warnings, scan_folder

if TYPE_CHECKING:
    from thawkit import Adapted, Recipe
    from torch import nn


class ModelInputError(ThawkitError):
    """The model cannot run on the input the recipe's data gives it."""


@dataclass
class Preflight:
    """What the checks found: the data folders (None without data), the class count, the
    preprocessing and the warnings to show when the run starts."""

    train: ImageFolderData | None
    val: ImageFolderData | None
    num_classes: int | None
    prep: Preprocess
    warnings: list[str] = field(default_factory=list)


def preflight(recipe: Recipe, *, data: bool = True,
              prep: Preprocess | None = None) -> Preflight:
    """Run train's checks before its first step; a :class:`~thawkit.ThawkitError` for the first
    that fails. ``data=False`` (``thawkit plan --no-data``) leaves out the data folders;
    ``prep``: the preprocessing a resumed run keeps (else resolved from the model and recipe)."""
    from thawkit import adapt_recipe, data_config

    if recipe.optimizer.lr_scale:
        raise ConfigError("optimizer.lr_scale: true is timm's form, for your own loop that sets "
                          "lr = base * lr_scale; thawkit train's schedules scale each group's lr "
                          "(the multipliers baked in), so leave optimizer.lr_scale false")
    train = val = None
    n = recipe.head.num_classes
    if data:
        train = scan_folder(recipe.data.train, "data.train")
        val = scan_folder(recipe.data.val, "data.val")
        n = check_classes(train, val, n)
    check_weights(recipe)
    twin = adapt_recipe(recipe, meta=True, num_classes=n)
    prep = prep or Preprocess.resolve(data_config(twin.model, pm=recipe.plugin_manager), recipe.data)
    notes = data_warnings(train, val) if train is not None and val is not None else []
    notes += random_backbone_warnings(recipe, twin)  # before the forward pass moves its phases on
    check_forward(recipe, twin, prep.image_size, n_train=None if train is None else len(train))
    return Preflight(train, val, n, prep, notes)


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


# ------------------------------------------------------------------ forward
def check_forward(recipe: Recipe, twin: Adapted, image_size: int, *, n_train: int | None) -> None:
    """One training-mode forward pass of the data's input shape through a meta-device twin
    (phase by phase when a batch can hold one image, which BatchNorm cannot train on)."""
    import torch

    single = n_train == 1 or recipe.data.batch_size == 1
    for phase in twin.phases if single else twin.phases[:1]:
        twin.on_epoch_start(phase.epoch)
        twin.model.train()
        x = torch.empty(1 if single else 2, 3, image_size, image_size, device="meta")
        try:
            twin.model(x)
        except ValueError as exc:
            if "more than 1 value per channel" not in str(exc):
                raise model_error(recipe, twin.model, tuple(x.shape), exc) from None
            cause = "data.train has one image" if n_train == 1 else "data.batch_size is 1"
            raise ConfigError(
                f"{cause}, so a training batch holds one image, and BatchNorm layers that train "
                f"(from epoch {phase.epoch + 1}) cannot normalise one value per channel ({exc}); use "
                "more training images and data.batch_size >= 2, or keep BatchNorm statistics "
                "frozen (a strategy with norm: frozen or affine)") from None
        except Exception as exc:  # noqa: BLE001 - the model's own words, worded below
            if meta_limitation(exc):
                return  # an operation the meta device cannot run: the run itself will tell
            raise model_error(recipe, twin.model, tuple(x.shape), exc) from None


def meta_limitation(exc: BaseException) -> bool:
    """Whether the meta device, not the model, failed (no kernel, a value read from a tensor)."""
    return isinstance(exc, NotImplementedError) or "meta" in str(exc).lower()


def model_error(recipe: Recipe, model: nn.Module, shape: tuple[int, ...], exc: BaseException,
                when: str = "") -> ModelInputError:
    """A :class:`ModelInputError` naming the model, the input shape, the model's own words and
    the field most likely to fix it."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    size = shape[-1]
    given = f"data.image_size: {size}" if recipe.data.image_size else \
        f"{size}, the model's own input size (data.image_size unset)"
    return ModelInputError(
        f"model {recipe.backbone.spec} cannot run on a batch of shape {tuple(shape)} ({given})"
        f"{when}: {type(exc).__name__}: {first}; {_size_hint(model, size)}")


def _size_hint(model: nn.Module, size: int) -> str:
    """The builder argument that fixes a model's input size, when the model has one."""
    for module in model.modules():
        for attr, kwarg in (("img_size", "img_size"), ("image_size", "image_size")):
            built = getattr(module, attr, None)
            if isinstance(built, (tuple, list)) and built:
                built = built[-1]
            if isinstance(built, int) and not isinstance(built, bool) and built != size:
                return (f"build the model for this size with backbone.kwargs: {{{kwarg}: {size}}}, "
                        f"or set data.image_size: {built} (the size it was built for)")
    return "check data.image_size and backbone.kwargs against the input the model expects"


# ------------------------------------------------------------------ warnings
#: sources whose models start from random weights unless ``weights``/``pretrained`` say otherwise
#: (a ``python:`` factory loads whatever weights it likes)
RANDOM_WITHOUT_WEIGHTS_EXCEPT = ("python",)


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
    unset = "backbone.weights: null" + (", backbone.pretrained: false" if b.source == "timm" else "")
    named = "backbone.pretrained: true" if b.source == "timm" else "backbone.weights: DEFAULT or a file"
    return [f"{b.spec} starts from random weights ({unset}), and strategy {recipe.strategy.name} "
            f"keeps {100 * frozen // total}% of them frozen from the first epoch: a frozen random "
            f"backbone trains to chance; name pretrained weights ({named}), use strategy full, or "
            "set backbone.random_init_ok: true if you mean it"]
