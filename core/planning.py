"""From a recipe to an adapted model: shared by ``thawkit plan`` and ``thawkit train``."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backbone import WEIGHT_SUFFIXES
from .errors import ConfigError, UnknownNameError, WeightsError

if TYPE_CHECKING:
    from .adapting import Adapted
    from .manager import ThawkitPluginManager
    from .recipe import Recipe


def count_classes(directory: str) -> int | None:
    """Number of class folders in an ImageFolder directory, or None if it does not exist."""
    path = Path(directory)
    if not path.is_dir():
        return None
    return sum(1 for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def build_adapted(recipe: Recipe, *, pm: ThawkitPluginManager, meta: bool = False,
                  num_classes: int | None = None, where: str = "recipe") -> Adapted:
    """Load the backbone, replace the head, apply the strategy and configure the optimizer.

    ``meta=True`` builds on the meta device without reading weights (for plans);
    the weights file must still exist.
    """
    from .adapting import adapt
    from .backbone import load_backbone

    options: dict[str, Any] = recipe.backbone.load_options()
    if meta:
        weights = options.pop("weights", None)
        options.pop("pretrained", None)
        if weights is not None and weights.lower().endswith(WEIGHT_SUFFIXES) and not Path(weights).is_file():
            raise WeightsError(f"backbone.weights: weights file {weights!r} does not exist")
        options["device"] = "meta"
    try:
        model = load_backbone(recipe.backbone.spec, pm=pm, **options)
    except UnknownNameError as exc:
        raise UnknownNameError(exc.kind, exc.name, exc.known,
                               where=f"{where}: backbone.name" if "model" in exc.kind else
                               f"{where}: backbone.source") from None
    n = num_classes or recipe.head.num_classes
    if n is None and recipe.data.train:
        n = count_classes(recipe.data.train)
    o = recipe.optimizer
    adapted = adapt(model, recipe.strategy.name, num_classes=n, dropout=recipe.head.dropout,
                    keep_aux=recipe.head.keep_aux, pm=pm, **recipe.strategy.params)
    adapted.configure(o.name, lr=o.lr, weight_decay=o.weight_decay, layer_decay=o.layer_decay,
                      min_scale=o.min_scale, head_lr_mult=o.head_lr_mult, lrs=o.lrs, **o.kwargs)
    return adapted


def plan_from_recipe(path: str, *, overrides: list[str] | None = None,
                     pm: ThawkitPluginManager) -> tuple[Adapted, Recipe]:
    """The adapted model (on the meta device) and validated recipe behind ``thawkit plan``."""
    from .recipe import load_recipe

    recipe = load_recipe(path, overrides=overrides, pm=pm)
    if recipe.head.num_classes is None and recipe.data.train and count_classes(recipe.data.train) is None:
        raise ConfigError(f"{path}: data.train: directory {recipe.data.train!r} does not exist "
                          "(needed to infer head.num_classes; or set head.num_classes)")
    return build_adapted(recipe, pm=pm, meta=True, where=str(path)), recipe
