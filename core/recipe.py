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
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model

from .errors import ConfigError, UnknownNameError, format_validation_error
from .param_groups import OptimizerSettings
from .strategy import Strategy, strategy_instance

if TYPE_CHECKING:
    from .adapted import Adapted
    from .plugin_manager import ThawkitPluginManager

#: The sections core defines; plugins cannot replace them.
CORE_SECTIONS = ("backbone", "head", "strategy", "optimizer", "plugins")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackboneSection(_Section):
    """Which pretrained model to start from."""

    source: str = Field(description="Source plugin: torchvision, timm, python, or a plugin's own.")
    name: str = Field(description="Model name within the source, e.g. resnet18.")
    weights: str | None = Field(None, description="torchvision: null, DEFAULT, an enum name, or a "
                                "local .pth/.safetensors file; timm: a local file.")
    pretrained: bool = Field(False, description="timm: download the published weights.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra builder arguments.")

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
    num_classes: int | None = Field(None, gt=0, description="Outputs of the new head; inferred from "
                                    "the training data when omitted.")
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
def read_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or JSON file; syntax errors name the file, line and column."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"{where}: YAML does not parse: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping with sections "
                          f"{', '.join(Recipe.model_fields)}; got {type(data).__name__}")
    return data


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
    if pm is None:
        pm = get_plugin_manager() if refs else default_plugin_manager()
    for ref in refs:
        if base is not None and ref.endswith(".py") and (base / ref).is_file():
            ref = str(base / ref)  # relative to the recipe file first, then to the working folder
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
    """Read, override (``key.path=value``, value parsed as YAML) and validate a recipe file.

    Example::

        recipe = thawkit.load_recipe("recipe.yaml", overrides=["optimizer.lr=0.01"])
        adapted = thawkit.adapt_recipe(recipe)
    """
    data = read_mapping(path)
    for item in overrides or []:
        apply_override(data, item)
    return validate_recipe(data, where=str(path), pm=pm, base=Path(path).parent)


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
        if meta and isinstance(weights, str) and weights.lower().endswith(WEIGHT_SUFFIXES) \
                and not Path(weights).is_file():
            raise WeightsError(f"{where}: backbone.weights: weights file {weights!r} does not exist")
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


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``key.path=value`` in a recipe mapping (the value parsed as YAML), as ``--set`` does."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. optimizer.lr=0.01")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a section")
        node = nxt
    node[parts[-1]] = value
