"""Whether a model runs on its data's input: the forward pass through a meta-device twin before
a run starts, and the message for an exception the model raises on its input (then or later)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from thawkit import ConfigError, ThawkitError

if TYPE_CHECKING:
    from thawkit import Adapted, Recipe
    from torch import nn


class ModelInputError(ThawkitError):
    """The model cannot run on the input the recipe's data gives it."""


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
                when: str = "", *, hint: str | None = None) -> ModelInputError:
    """A :class:`ModelInputError` naming the model, the input shape, the model's own words and
    the field most likely to fix it (``hint``: the data reader's words for that; by default
    the image size's)."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    if hint is not None:
        return ModelInputError(f"model {recipe.backbone.spec} cannot run on a batch of shape "
                               f"{tuple(shape)}{when}: {type(exc).__name__}: {first}; {hint}")
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
