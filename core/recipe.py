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

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model, field_validator

from .errors import ConfigError, UnknownNameError, format_validation_error, quote, shorten
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
#: Limits on a recipe document (docs/recipes.md, "Limits"): bytes, nesting, size with YAML
#: aliases expanded (one per value plus the characters of each scalar), digits of an integer.
MAX_BYTES, MAX_DEPTH, MAX_EXPANDED, MAX_DIGITS = 100_000, 100, 100_000, 100


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or JSON file within the limits; errors name the file, line and column."""
    path, name = Path(path), shorten(str(path))
    try:
        if not path.is_file():
            raise ConfigError(f"recipe file {name!r} " + ("is not a regular file" if path.exists()
                                                         else "does not exist"))
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"recipe file {name!r} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{name}: a recipe may hold at most {MAX_BYTES:,} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{name}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
                          f"{exc.start}); save the recipe as UTF-8") from None
    data = parse_text(text, name, json_=path.suffix == ".json")
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: a recipe must be a mapping with sections "
                          f"{', '.join(Recipe.model_fields)}; got {type(data).__name__}")
    return data


def parse_text(text: str, where: str, *, json_: bool = False) -> Any:
    """YAML (or JSON) text to Python values, within the limits above."""
    import yaml

    if json_:
        def integer(digits: str) -> int:
            if len(digits) > MAX_DIGITS:
                raise ValueError(f"an integer of {len(digits):,} digits (at most {MAX_DIGITS})")
            return int(digits)
        try:
            data = json.loads(text, parse_int=integer)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
        stack = [(data, 1)]  # nesting (a JSON text has no aliases, and its bytes are bounded)
        while stack:
            value, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels")
            stack += [(v, depth + 1) for v in (value.values() if isinstance(value, dict) else
                                               value if isinstance(value, list) else ())]
        return data
    try:
        return _yaml(text, where)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        raise ConfigError(f"{at}: YAML does not parse: {getattr(exc, 'problem', None) or exc}") from None
    except ConfigError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:  # a constructor's (e.g. a date 2020-13-45)
        raise ConfigError(f"{where}: YAML value does not parse: {shorten(str(exc))}") from None


def _yaml(text: str, where: str) -> Any:
    """Safe YAML within the limits (a ConfigError past one; yaml.YAMLError on bad syntax)."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _expanded(node, {}, where)
        return loader.construct_document(node) if node is not None else None
    except RecursionError:  # composing a node nested ~1000 deep, before _expanded could look
        raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def _limit(where: str, mark: Any, what: str) -> ConfigError:
    return ConfigError(f"{where}:{mark.line + 1}:{mark.column + 1}: {what} (recipe limits: "
                       "docs/recipes.md)")


def _expanded(node: Any, seen: dict[int, Any], where: str, level: int = 1) -> tuple[int, int]:
    """Size and depth of ``node`` with aliases expanded; raises past the limits."""
    import yaml

    known = seen.get(id(node), ())
    if known is None:
        raise _limit(where, node.start_mark, "an alias refers to a node that contains it")
    size, height = known or (0, 1)
    if level + height - 1 > MAX_DEPTH:
        raise _limit(where, node.start_mark, f"nested deeper than {MAX_DEPTH} levels")
    if known:
        return size, height
    seen[id(node)] = None
    if isinstance(node, yaml.ScalarNode):
        if node.tag.endswith(":int") and len(node.value) > MAX_DIGITS:
            raise _limit(where, node.start_mark, f"an integer of {len(node.value):,} digits (at "
                         f"most {MAX_DIGITS})")
        size, height = 1 + len(node.value), 1
    else:
        items = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) \
            else node.value
        parts = [_expanded(n, seen, where, level + 1) for n in items]
        size, height = 1 + sum(p[0] for p in parts), 1 + max((p[1] for p in parts), default=0)
    if size > MAX_EXPANDED:
        raise _limit(where, node.start_mark, f"the document expands to more than {MAX_EXPANDED:,} "
                     "values and characters (a YAML alias counts once per use)")
    seen[id(node)] = (size, height)
    return size, height


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
    return validate_recipe(data, where=shorten(str(path)), pm=pm, base=Path(path).parent)


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


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``key.path=value`` in a recipe mapping (the value parsed as YAML), as ``--set`` does."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"--set {quote(item)}: expected key.path=value, e.g. optimizer.lr=0.01")
    key, raw = item.split("=", 1)
    try:
        value = _yaml(raw, f"--set {shorten(key)}")
    except ConfigError:
        raise
    except (yaml.YAMLError, ValueError, TypeError, OverflowError):
        value = raw
    node = data
    parts = key.strip().split(".")
    if len(parts) > MAX_DEPTH:
        raise ConfigError(f"--set {shorten(key)}: a key path of more than {MAX_DEPTH} parts")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {quote(item)}: {shorten(part)} is not a section")
        node = nxt
    node[parts[-1]] = value
