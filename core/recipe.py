"""The recipe: one validated description of a whole run (pydantic v2, ``extra="forbid"``).

Validated once where it enters (file or dict); named parts (strategy,
optimizer, schedule) are checked against the plugin registries, and each
strategy validates its own parameters with its ``Params`` model.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    from .manager import ThawkitPluginManager


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

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimizerSection(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field("adamw", description="Optimizer name; `thawkit optimizers` lists them.")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    layer_decay: float | None = Field(None, gt=0, le=1, description="Layer-wise LR decay factor.")
    min_scale: float = Field(0.0, ge=0, description="Lower bound on layer-decay scales.")
    head_lr_mult: float = Field(1.0, gt=0, description="Multiplier on the head's learning rate.")
    lrs: dict[str, float] = Field(default_factory=dict, description="Explicit lr per block name.")

    @property
    def kwargs(self) -> dict[str, Any]:
        """Extra optimizer arguments (momentum, betas, ...), checked against the optimizer."""
        return dict(self.model_extra or {})


class ScheduleSection(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field("constant", description="constant, cosine, step, onecycle, plateau, ...")
    warmup_epochs: float = Field(0.0, ge=0)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataSection(_Section):
    train: str | None = Field(None, description="ImageFolder directory of training images.")
    val: str | None = Field(None, description="ImageFolder directory of validation images.")
    image_size: int | None = Field(None, gt=0, description="Override the backbone's input size.")
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    augment: bool = Field(True, description="Random resized crop and flip when training.")
    batch_size: int = Field(32, gt=0)
    num_workers: int = Field(0, ge=0)


class TrainSection(_Section):
    epochs: int = Field(10, gt=0)
    seed: int = 0
    deterministic: bool = False
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1, mps.")
    amp: bool | None = Field(None, description="Mixed precision; default: on for CUDA.")
    output: str = Field("runs/exp", description="Run directory.")
    grad_clip: float | None = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class Recipe(_Section):
    """A whole fine-tuning run."""

    backbone: BackboneSection
    head: HeadSection = Field(default_factory=HeadSection)
    strategy: StrategySection
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    plugins: list[str] = Field(default_factory=list, description="Extra plugin modules or .py files.")


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


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(recipe)"


def format_validation_error(exc: ValidationError, *, where: str, prefix: tuple[Any, ...] = (),
                            model: type[BaseModel] | None = None) -> str:
    """One line per problem: the field path, what is wrong and, for unknown fields, what is allowed."""
    lines = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = _allowed_fields(model or Recipe, loc[len(prefix):-1])
            msg = f"unknown field; allowed fields: {', '.join(allowed)}" if allowed else "unknown field"
        elif err["type"] == "missing":
            msg = "field required"
        lines.append(f"{where}: {_loc(loc)}: {msg}")
    return "\n".join(lines)


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc:
        if isinstance(part, int):  # a list index: stay on the item model
            continue
        field = model.model_fields.get(str(part))
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``Model``, ``Model | None`` or ``list[Model]``."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def validate_recipe(data: dict[str, Any], *, where: str = "recipe",
                    pm: ThawkitPluginManager | None = None, base: Path | None = None) -> Recipe:
    """Validate a recipe mapping against the static sections and the plugin registries.

    ``base`` is the recipe file's folder: relative ``.py`` plugin paths resolve against it.
    """
    from .manager import default_plugin_manager

    pm = pm or default_plugin_manager()
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where=where)) from None
    for ref in recipe.plugins:
        if base is not None and ref.endswith(".py") and (base / ref).is_file():
            ref = str(base / ref)  # relative to the recipe file first, then to the working folder
        pm.load_local(ref)
    validate_strategy_params(recipe.strategy.name, recipe.strategy.params, pm=pm, where=where)
    if recipe.backbone.source not in pm.sources:
        raise UnknownNameError("source", recipe.backbone.source, pm.sources.names(),
                               where=f"{where}: backbone.source")
    factory = pm.optimizers.get(recipe.optimizer.name, where=f"{where}: optimizer.name")
    check_kwargs(factory, recipe.optimizer.kwargs, where=f"{where}: optimizer",
                 what=f"optimizer {recipe.optimizer.name!r}")
    sched = pm.schedules.get(recipe.schedule.name, where=f"{where}: schedule.name")
    params_model = getattr(sched, "Params", None)
    if params_model is not None:
        try:
            params_model.model_validate(recipe.schedule.params)
        except ValidationError as exc:
            text = format_validation_error(exc, where=where, prefix=("schedule",), model=params_model)
            own = [f for f in ScheduleSection.model_fields]
            raise ConfigError(text.replace("allowed fields: ", f"allowed fields: {', '.join(own)}, ")
                              ) from None
    return recipe


def validate_strategy_params(name: str, params: dict[str, Any], *,
                             pm: ThawkitPluginManager, where: str = "strategy") -> Any:
    """The strategy's validated ``Params``; errors name ``strategy.<field>``."""
    cls = pm.strategies.get(name, where=f"{where}: strategy.name")
    try:
        return cls.Params.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where=where, prefix=("strategy",),
                                                  model=cls.Params)) from None


def check_kwargs(factory: Any, kwargs: dict[str, Any], *, where: str, what: str,
                 section: type[BaseModel] | None = OptimizerSection) -> None:
    """Reject keyword arguments the factory (or the class it wraps) does not take."""
    from .errors import closest

    if not kwargs:
        return
    target = getattr(factory, "accepts", None) or factory
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    own = list(section.model_fields) if section is not None else []
    allowed = own + [n for n, p in params.items()
                     if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                     and n not in ("self", "params", "param_groups", "lr", "weight_decay") and n not in own]
    bad = [k for k in kwargs if k not in params]
    if bad:
        hint = closest(bad[0], allowed)
        guess = f"did you mean {', '.join(repr(h) for h in hint)}? " if hint else ""
        raise ConfigError(f"{where}.{bad[0]}: not a field of the optimizer section nor a parameter of "
                          f"{what}; {guess}allowed: {', '.join(allowed)}")


def load_recipe(path: str | Path, *, overrides: list[str] | None = None,
                pm: ThawkitPluginManager | None = None) -> Recipe:
    """Read, override (``key.path=value``, value parsed as YAML) and validate a recipe file."""
    data = read_mapping(path)
    for item in overrides or []:
        apply_override(data, item)
    return validate_recipe(data, where=str(path), pm=pm, base=Path(path).parent)


def apply_override(data: dict[str, Any], item: str) -> None:
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


def recipe_json_schema(pm: ThawkitPluginManager | None = None) -> dict[str, Any]:
    """JSON Schema of a recipe, with one alternative per registered strategy (for editors)."""
    from typing import Annotated, Union

    from pydantic import Discriminator

    from .manager import default_plugin_manager

    pm = pm or default_plugin_manager()
    variants = []
    for name in pm.strategies.names():
        cls = pm.strategies.get(name)
        variants.append(create_model(
            f"Strategy_{name.replace('-', '_')}", __base__=cls.Params,
            name=(Literal[name], Field(description=cls.summary())),  # type: ignore[valid-type]
        ))
    fields: dict[str, Any] = {n: (f.annotation, f) for n, f in Recipe.model_fields.items()}
    if variants:
        union = Annotated[Union[tuple(variants)], Discriminator("name")]  # type: ignore[valid-type]  # noqa: UP007
        fields["strategy"] = (union, Field(description="Freezing strategy and its parameters."))
    model = create_model("ThawkitRecipe", __base__=_Section, **fields)
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "thawkit recipe"
    return schema
