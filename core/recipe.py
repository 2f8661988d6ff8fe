"""The recipe: one validated description of a whole run (pydantic v2, unknown keys rejected).

A recipe is validated once, where it enters (a file or a mapping), into typed
objects that the rest of thawkit takes as they are: ``recipe.strategy.instance``
is the :class:`~thawkit.Strategy` with its validated parameters and
``recipe.optimizer`` the :class:`~thawkit.OptimizerSettings`. Core defines the
sections ``backbone``, ``head``, ``strategy``, ``optimizer`` and ``plugins``;
plugins add their own through ``thawkit_recipe_sections`` (the training plugin
adds ``data``, ``train`` and ``schedule``).

A recipe that names ``plugins:`` and is loaded without ``pm=`` gets a plugin
manager of its own (the shared built-ins and entry points, plus those plugins):
``recipe.plugin_manager``. The shared manager is never changed by a recipe.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model, field_validator

from .errors import ConfigError, PluginError, UnknownNameError, format_validation_error, quote, shorten
from .param_groups import OptimizerSettings
from .strategy import Strategy, strategy_instance

if TYPE_CHECKING:
    from .adapted import Adapted
    from .plugin_manager import ThawkitPluginManager

#: The sections core defines; plugins cannot replace them.
CORE_SECTIONS = ("backbone", "head", "strategy", "optimizer", "plugins")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class BackboneSection(_Section):
    """Which pretrained model to start from."""

    source: str = Field(description="Source plugin: torchvision, timm, python, or a plugin's own.")
    name: str = Field(description="Model name within the source, e.g. resnet18.")
    weights: str | None = Field(None, description="torchvision: null, DEFAULT, an enum name, or a "
                                "local .pth/.safetensors file; timm: a local file.")
    pretrained: bool = Field(False, description="timm: download the published weights.")
    random_init_ok: bool = Field(False, description="Mean it: a freezing strategy on random weights.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra builder arguments.")

    @field_validator("kwargs")
    @classmethod
    def _no_device(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        if "device" in kwargs:
            raise ValueError("device: not a builder argument in a recipe; set train.device")
        return kwargs

    @property
    def spec(self) -> str:
        return f"{self.source}:{self.name}"

    def load_options(self) -> dict[str, Any]:
        opts = dict(self.kwargs)
        if self.weights is not None:
            opts["weights"] = self.weights
        if self.pretrained:
            opts["pretrained"] = True
        return opts


class HeadSection(_Section):
    num_classes: int | None = Field(None, gt=0, le=10**6, description="Outputs of the new head; "
                                    "inferred from the training data when omitted.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout before the new classifier.")
    keep_aux: bool = Field(False, description="Keep (and replace) googlenet/inception auxiliary heads.")


class StrategySection(BaseModel):
    """``name`` plus the strategy's own parameters beside it (validated by the strategy)."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="Strategy name; `thawkit strategies` lists them.")
    _instance: Strategy | None = PrivateAttr(default=None)

    @property
    def params(self) -> dict[str, Any]:
        """The strategy's parameters as written (everything beside ``name``)."""
        return dict(self.model_extra or {})

    @property
    def instance(self) -> Strategy:
        """The registered strategy with its validated parameters (set when the recipe validates)."""
        if self._instance is None:
            raise ConfigError("this strategy section was not validated against a plugin manager; "
                              "read recipes with thawkit.load_recipe() or validate_recipe()")
        return self._instance


class Recipe(_Section):
    """A whole fine-tuning run: core's sections, plus one attribute per plugin section.

    Build it with :func:`load_recipe` (a file) or :func:`validate_recipe` (a mapping).
    """

    backbone: BackboneSection
    head: HeadSection = Field(default_factory=HeadSection)
    strategy: StrategySection
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    plugins: list[str] = Field(default_factory=list, description="Extra plugin modules or .py files.")
    _pm: ThawkitPluginManager | None = PrivateAttr(default=None)

    @property
    def plugin_manager(self) -> ThawkitPluginManager:
        """The plugin manager this recipe was validated against (and adapts with)."""
        if self._pm is None:
            raise ConfigError("this recipe was not validated; use thawkit.load_recipe()")
        return self._pm

    def section(self, name: str) -> Any:
        """A plugin section by name (``recipe.section("train")`` is ``recipe.train``)."""
        return getattr(self, name)


def recipe_model(pm: ThawkitPluginManager) -> type[Recipe]:
    """The :class:`Recipe` class with every section the plugins of ``pm`` add."""
    sections = pm.recipe_sections
    for name in sections.names():
        if name in CORE_SECTIONS:
            raise ConfigError(f"plugin {sections.entries[name].plugin!r} registers recipe section "
                              f"{name!r}, which is one of core's ({', '.join(CORE_SECTIONS)})")
    return _recipe_class(tuple((name, sections.get(name)) for name in sections.names()))


@functools.lru_cache(maxsize=64)
def _recipe_class(sections: tuple[tuple[str, type[BaseModel]], ...]) -> type[Recipe]:
    # one class per set of sections, so recipes validated against equal plugin sets compare equal
    extra: dict[str, Any] = {name: (model, Field(default_factory=model)) for name, model in sections}
    return create_model("Recipe", __base__=Recipe, **extra) if extra else Recipe


# ---------------------------------------------------------------------- loading
def validate_recipe(data: dict[str, Any], *, where: str = "recipe",
                    pm: ThawkitPluginManager | None = None, base: Path | None = None) -> Recipe:
    """Validate a recipe mapping once: sections, then names against the plugin registries.

    ``base`` is the recipe file's folder: relative ``.py`` plugin paths resolve against it.
    Without ``pm``, a recipe naming ``plugins:`` gets a fresh manager of its own.
    """
    from .plugin_manager import default_plugin_manager, get_plugin_manager

    refs = data.get("plugins") or []
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise ConfigError(f"{where}: plugins: expected a list of module names or .py files")
    data = {**data, "plugins": (refs := list(refs))} if refs else data  # the caller's stays as given
    if pm is None:
        pm = get_plugin_manager() if refs else default_plugin_manager()
    for i, ref in enumerate(refs):  # a .py file next to the recipe first, then in the working folder
        found = [p for p in (base and base / ref, Path(ref)) if p and ref.endswith(".py") and p.is_file()]
        refs[i] = ref = os.path.abspath(found[0]) if found else ref  # absolute: found from anywhere
        pm.load_local(ref)
    model = recipe_model(pm)
    try:
        recipe = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where=where, model=model)) from None
    recipe.strategy._instance = strategy_instance(recipe.strategy.name, recipe.strategy.params,
                                                  pm=pm, where=where)
    if recipe.backbone.source not in pm.sources:
        raise UnknownNameError("source", recipe.backbone.source, pm.sources.names(),
                               where=f"{where}: backbone.source")
    factory = pm.optimizers.get(recipe.optimizer.name, where=f"{where}: optimizer.name")
    recipe.optimizer.check_against(factory, where=f"{where}: optimizer")
    for name in pm.recipe_sections.names():
        resolve = getattr(recipe.section(name), "resolve", None)
        if callable(resolve):
            with pm.guard(pm.recipe_sections.entries[name].plugin, f"recipe section {name!r}: resolve()"):
                resolve(pm, where)
    recipe._pm = pm
    return recipe


def load_recipe(path: str | Path, *, overrides: list[str] | None = None,
                pm: ThawkitPluginManager | None = None) -> Recipe:
    """Read a recipe file, apply ``--set`` overrides (``key.path=value``) and validate it.

    A plugin reads the file (``thawkit_read_recipe``; the built-in reader takes YAML and
    JSON), with ``pm`` or the shared manager; the recipe's own ``plugins:`` then join it.

    Example::

        recipe = thawkit.load_recipe("recipe.yaml", overrides=["optimizer.lr=0.01"])
        adapted = thawkit.adapt_recipe(recipe)
    """
    from .plugin_manager import default_plugin_manager

    where, path = shorten(str(path)), Path(path)
    data = (pm or default_plugin_manager()).hook.thawkit_read_recipe(path=path,
                                                                    overrides=list(overrides or []))
    if data is None:
        raise ConfigError(f"{where}: no plugin reads {path.suffix or 'suffix-less'} recipe files")
    if not isinstance(data, dict):
        raise PluginError(f"{where}: a thawkit_read_recipe plugin returned {type(data).__name__}, "
                          "not a mapping")
    return validate_recipe(data, where=where, pm=pm, base=path.parent)


def adapt_recipe(recipe: Recipe, *, meta: bool = False, load_weights: bool = True,
                 num_classes: int | None = None, where: str = "recipe") -> Adapted:
    """Load the recipe's backbone, replace its head and apply its strategy.

    ``meta=True`` builds on the meta device without reading weights (for plans; a named
    weights file must still exist); ``load_weights=False`` skips the backbone's weights
    (to rebuild a trained model whose own weights are loaded next). The number of
    classes is ``num_classes``, else ``head.num_classes``, else what a plugin infers
    (``thawkit_infer_num_classes``); with none, the model keeps its own head.
    Parameter groups are not built here: call ``adapted.optimizer(recipe.optimizer)``.
    """
    from .api import adapt
    from .backbone import WEIGHT_SUFFIXES, load_backbone
    from .errors import WeightsError

    pm = recipe.plugin_manager
    options: dict[str, Any] = recipe.backbone.load_options()
    if meta or not load_weights:
        weights = options.pop("weights", None)
        options.pop("pretrained", None)
        if meta and isinstance(weights, str) and weights.lower().endswith(WEIGHT_SUFFIXES):
            try:  # a directory, a FIFO or a device is no weights file either
                what = "" if Path(weights).is_file() else "is not a regular file" \
                    if Path(weights).exists() else "does not exist"
            except OSError as exc:
                what = f"cannot be read: {exc.strerror or exc}"
            if what:
                raise WeightsError(f"{where}: backbone.weights: weights file {quote(weights)} {what}")
    if meta:
        options["device"] = "meta"
    try:
        model = load_backbone(recipe.backbone.spec, pm=pm, **options)
    except UnknownNameError as exc:
        field = "backbone.name" if "model" in exc.kind else "backbone.source"
        raise UnknownNameError(exc.kind, exc.name, exc.known, where=f"{where}: {field}") from None
    n = num_classes or recipe.head.num_classes
    if n is None:
        n = pm.hook.thawkit_infer_num_classes(recipe=recipe, where=where)
    return adapt(model, recipe.strategy.instance, num_classes=n, dropout=recipe.head.dropout,
                 keep_aux=recipe.head.keep_aux, pm=pm)
