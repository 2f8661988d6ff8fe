"""Recipes: YAML/JSON loading, --set overrides, validation messages and the JSON Schema."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from pydantic import Field
from torch import nn

import thawkit
from thawkit.plugins.train.schedules import schedule_registry
from thawkit.errors import ConfigError, UnknownNameError
from thawkit.plugins.inspection import recipe_json_schema
from thawkit.plugins.recipe_files import apply_override
from thawkit.recipe import load_recipe, validate_recipe

BASE = {
    "backbone": {"source": "toy", "name": "mlp"},
    "head": {"num_classes": 3},
    "strategy": {"name": "gradual", "every": 2},
    "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.05},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "train": {"epochs": 4},
}


class ToySource:
    description = "a three-layer perceptron"

    def load(self, name, options):
        options = dict(options)
        with torch.device(options.pop("device", None) or "cpu"):
            return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                                 nn.Linear(8, 2))

    def list_models(self, pattern=None):
        return ["mlp"]


class ToyPlugin:
    @thawkit.hookimpl
    def thawkit_register_sources(self, register):
        register("toy", ToySource())


@pytest.fixture
def toy_pm(pm):
    pm.register(ToyPlugin(), name="toy")
    return pm


def write(tmp_path, data, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return path


def error_of(exc_type, fn, *args, **kwargs) -> str:
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    return str(info.value)


# -------------------------------------------------------------------- loading
def test_yaml_and_json_give_the_same_recipe(tmp_path, toy_pm):
    from_yaml = load_recipe(write(tmp_path, BASE), pm=toy_pm)
    from_json = load_recipe(write(tmp_path, BASE, "recipe.json"), pm=toy_pm)
    assert from_yaml == from_json
    assert from_yaml.strategy.name == "gradual" and from_yaml.strategy.params == {"every": 2}
    assert from_yaml.backbone.spec == "toy:mlp"
    assert from_yaml.data.batch_size == 32  # defaults fill the sections left out


def test_minimal_recipe_needs_only_backbone_and_strategy(toy_pm):
    recipe = validate_recipe({"backbone": {"source": "toy", "name": "mlp"},
                              "strategy": {"name": "full"}}, pm=toy_pm)
    assert (recipe.optimizer.name, recipe.schedule.name) == ("adamw", "constant")


def test_missing_section_is_named(toy_pm):
    msg = error_of(ConfigError, validate_recipe, {"backbone": {"source": "toy", "name": "mlp"}},
                   where="r.yaml", pm=toy_pm)
    assert msg == "r.yaml: strategy: field required"


@pytest.mark.parametrize("section, field, allowed", [
    (None, "stratgy", "backbone, head, strategy, optimizer, plugins, data, schedule, train"),
    ("head", "num_clases", "num_classes, dropout, keep_aux"),
    ("data", "batchsize", "batch_size"),
    ("train", "epoch", "epochs"),
    ("backbone", "weigths", "weights"),
])
def test_misspelt_field_gives_path_and_allowed_fields(tmp_path, toy_pm, section, field, allowed):
    data = json.loads(json.dumps(BASE))
    (data.setdefault(section, {}) if section else data)[field] = 1
    path = write(tmp_path, data)
    msg = error_of(ConfigError, load_recipe, path, pm=toy_pm)
    where = f"{section}.{field}" if section else field
    assert msg.startswith(f"{path}: {where}: unknown field; allowed fields: ")
    assert allowed in msg


def test_misspelt_optimizer_argument_lists_the_real_ones(tmp_path, toy_pm):
    data = {**BASE, "optimizer": {"name": "sgd", "lr": 0.1, "momentun": 0.9}}
    msg = error_of(ConfigError, load_recipe, write(tmp_path, data), pm=toy_pm)
    assert ("optimizer.momentun: not a field of the optimizer section nor a parameter of "
            "optimizer 'sgd'; did you mean 'momentum'?") in msg
    assert "momentum" in msg and "nesterov" in msg and "layer_decay" in msg


def test_yaml_syntax_error_gives_file_line_and_column(tmp_path, toy_pm):
    path = tmp_path / "broken.yaml"
    path.write_text("backbone: {source: toy, name: mlp}\nstrategy:\n  name: [full\nhead: {}\n")
    msg = error_of(ConfigError, load_recipe, path, pm=toy_pm)
    assert msg.startswith(f"{path}:4:5: YAML does not parse")


def test_json_syntax_error_gives_file_line_and_column(tmp_path, toy_pm):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "backbone": {"source": "toy",, "name": "mlp"}\n}\n')
    msg = error_of(ConfigError, load_recipe, path, pm=toy_pm)
    assert msg.startswith(f"{path}:2:32: invalid JSON")


def test_recipe_that_is_not_a_mapping(tmp_path, toy_pm):
    path = tmp_path / "list.yaml"
    path.write_text("- backbone\n- strategy\n")
    assert "a recipe must be a mapping" in error_of(ConfigError, load_recipe, path, pm=toy_pm)


def test_missing_file(tmp_path, toy_pm):
    msg = error_of(ConfigError, load_recipe, tmp_path / "nope.yaml", pm=toy_pm)
    assert "nope.yaml" in msg and "does not exist" in msg


# ----------------------------------------------------- each strategy validates its params
@pytest.mark.parametrize("strategy, expected", [
    ({"name": "gradual", "every": 0}, "strategy.every: Input should be greater than or equal to 1"),
    ({"name": "gradual", "evry": 2},
     "strategy.evry: unknown field; allowed fields: norm, frozen_dropout, every"),
    ({"name": "last-block", "blocks": "two"}, "strategy.blocks: Input should be a valid integer"),
    ({"name": "head-only", "blocks": 1}, "strategy.blocks: unknown field; allowed fields: norm"),
    ({"name": "full", "norm": "frozn"},
     "strategy.norm: Input should be 'frozen', 'affine' or 'train'"),
    ({"name": "gradual", "frozen_dropout": False},
     "strategy.frozen_dropout: Input should be 'keep' or 'off'"),
    ({"name": "pattern", "include": ["layer[4"]}, "strategy.include"),
    ({"every": 2}, "strategy.name: field required"),
])
def test_strategy_parameters_are_validated_with_their_path(toy_pm, strategy, expected):
    msg = error_of(ConfigError, validate_recipe, {**BASE, "strategy": strategy}, where="r.yaml",
                   pm=toy_pm)
    assert msg.startswith(f"r.yaml: {expected}")


class WarmParams(thawkit.StrategyParams):
    warm_epochs: int = Field(1, ge=1)


class Warm(thawkit.Strategy):
    name = "warm"
    Params = WarmParams

    def phases(self, layout, model):
        return [thawkit.Phase(0, layout.head.params)]


class WarmPlugin:
    @thawkit.hookimpl
    def thawkit_register_strategies(self, register):
        register(Warm)


def test_plugin_strategy_validates_its_own_params(toy_pm):
    toy_pm.register(WarmPlugin(), name="warm")
    assert validate_recipe({**BASE, "strategy": {"name": "warm", "warm_epochs": 3}}, pm=toy_pm)
    too_short = {**BASE, "strategy": {"name": "warm", "warm_epochs": 0}}
    msg = error_of(ConfigError, validate_recipe, too_short, pm=toy_pm)
    assert "strategy.warm_epochs: Input should be greater than or equal to 1" in msg


def test_misspelt_field_inside_a_list_of_models_lists_allowed_fields(toy_pm):
    strategy = {"name": "gradual", "phases": [{"epoch": 0, "blocks": ["head"]},
                                              {"epoch": 2, "bloks": ["2"]}]}
    msg = error_of(ConfigError, validate_recipe, {**BASE, "strategy": strategy}, pm=toy_pm)
    assert "strategy.phases.1.bloks: unknown field; allowed fields: epoch, blocks, params, rest" \
        in msg



# ------------------------------------------- unknown fields: the closest name, or the right section
@pytest.mark.parametrize("change, expected", [
    ({"strategy": {"name": "gradual", "evry": 2}},
     "strategy.evry: unknown field; allowed fields: norm, frozen_dropout, every, start, phases; "
     "did you mean 'every'?"),
    ({"strategy": {"name": "gradual", "phases": [{"epoch": 0, "bloks": ["head"]}]}},
     "strategy.phases.0.bloks: unknown field; allowed fields: epoch, blocks, params, rest; "
     "did you mean 'blocks'?"),
    ({"train": {"image_size": 32}}, "train.image_size: unknown field; allowed fields: epochs, "),
    ({"batch_size": 8}, "batch_size: unknown field; allowed fields: backbone, head, strategy, "),
    ({"head": {"epochs": 3}}, "head.epochs: unknown field; allowed fields: num_classes, dropout, "),
])
def test_unknown_field_names_the_closest_field_or_its_section(toy_pm, change, expected):
    msg = error_of(ConfigError, validate_recipe, {**BASE, **change}, where="r.yaml", pm=toy_pm)
    assert msg.startswith(f"r.yaml: {expected}")
    field = msg.split(": ")[1].rsplit(".", 1)[-1]
    right = {"image_size": "data.image_size", "batch_size": "data.batch_size", "epochs": "train.epochs"}
    if field in right:  # nothing close in its own section: the section it belongs in
        assert msg.endswith(f"; it belongs in {right[field].split('.')[0]}: {right[field]}")
        assert "did you mean" not in msg


def test_unknown_field_without_a_near_name_gets_no_guess(toy_pm):
    msg = error_of(ConfigError, validate_recipe, {**BASE, "train": {"zqx": 1}}, pm=toy_pm)
    assert msg.startswith("recipe: train.zqx: unknown field; allowed fields: epochs")
    assert "did you mean" not in msg and "belongs" not in msg


def test_unknown_field_suggestions_cover_plugin_sections_and_strategy_params(toy_pm):
    from pydantic import BaseModel, ConfigDict

    class LabelsSection(BaseModel):
        model_config = ConfigDict(extra="forbid")
        synonym_file: str = ""

    class Labels:
        @thawkit.hookimpl
        def thawkit_recipe_sections(self, register):
            register("labels", LabelsSection)

    toy_pm.register(Labels(), name="labels")
    toy_pm.register(WarmPlugin(), name="warm")
    misplaced = error_of(ConfigError, validate_recipe, {**BASE, "train": {"synonym_file": "s.txt"}},
                         pm=toy_pm)
    assert misplaced.endswith("; it belongs in labels: labels.synonym_file")
    misspelt = error_of(ConfigError, validate_recipe, {**BASE, "labels": {"synonym_fiel": "s.txt"}},
                        pm=toy_pm)
    assert misspelt.endswith("labels.synonym_fiel: unknown field; allowed fields: synonym_file; "
                             "did you mean 'synonym_file'?")
    param = error_of(ConfigError, validate_recipe, {**BASE, "strategy": {"name": "warm", "warm_epoch": 2}},
                     pm=toy_pm)
    assert param.endswith("strategy.warm_epoch: unknown field; allowed fields: norm, frozen_dropout, "
                          "warm_epochs; did you mean 'warm_epochs'?")


# ------------------------------------------------------------ unknown names
@pytest.mark.parametrize("path, value, kind, suggestion", [
    ("strategy.name", "gradul", "strategy", "gradual"),
    ("optimizer.name", "adamww", "optimizer", "adamw"),
    ("backbone.source", "toi", "source", "toy"),
    ("schedule.name", "cosin", "schedule", "cosine"),
])
def test_unknown_name_gives_closest_names_and_full_list(tmp_path, toy_pm, path, value, kind,
                                                        suggestion):
    file = write(tmp_path, BASE)
    with pytest.raises(UnknownNameError) as info:
        load_recipe(file, overrides=[f"{path}={value}"], pm=toy_pm)
    err = info.value
    assert (err.kind, err.name) == (kind, value)
    assert suggestion in err.suggestions
    registry = {"strategy": toy_pm.strategies, "optimizer": toy_pm.optimizers,
                "source": toy_pm.sources, "schedule": schedule_registry(toy_pm)}[kind]
    assert err.known == registry.names()
    first, listing = str(err).split("\n")
    assert first.startswith(f"{file}: {path}: unknown {kind} '{value}'; did you mean ")
    assert f"'{suggestion}'" in first
    assert listing.endswith(", ".join(registry.names()))


# ------------------------------------------------------------------ overrides
def test_set_overrides_parse_values_as_yaml(tmp_path, toy_pm):
    path = write(tmp_path, BASE)
    recipe = load_recipe(path, pm=toy_pm, overrides=[
        "optimizer.lr=0.01", "strategy={name: last-block, blocks: 2}", "data.mean=[0.5, 0.5, 0.5]",
        "optimizer.momentum=0.8", "optimizer.name=sgd", "train.amp=false"])
    assert recipe.optimizer.lr == 0.01 and recipe.optimizer.kwargs == {"momentum": 0.8}
    assert recipe.data.mean == (0.5, 0.5, 0.5) and recipe.train.amp is False
    assert recipe.strategy.name == "last-block"
    assert recipe.strategy.params == {"blocks": 2}


def test_frozen_dropout_off_is_a_string_in_yaml_and_by_set(tmp_path, toy_pm):
    """YAML 1.2 reads ``off`` as the string it is (YAML 1.1 would make it false), in the file and
    in a --set override; every strategy takes it."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**BASE, "strategy": {"name": "full"}}).replace(
        "  name: full\n", "  name: full\n  frozen_dropout: off\n"))
    recipe = load_recipe(path, pm=toy_pm)
    assert recipe.strategy.params == {"frozen_dropout": "off"}
    assert recipe.strategy.instance.params.frozen_dropout == "off"
    by_set = load_recipe(write(tmp_path, BASE), overrides=["strategy.frozen_dropout=off"], pm=toy_pm)
    assert by_set.strategy.instance.params.frozen_dropout == "off"
    assert load_recipe(write(tmp_path, BASE), pm=toy_pm).strategy.instance.params.frozen_dropout == "keep"


def test_set_creates_missing_sections(toy_pm):
    data = {"backbone": {"source": "toy", "name": "mlp"}, "strategy": {"name": "full"}}
    apply_override(data, "train.epochs=3")
    apply_override(data, "head.dropout=0.2")
    recipe = validate_recipe(data, pm=toy_pm)
    assert recipe.train.epochs == 3 and recipe.head.dropout == 0.2


@pytest.mark.parametrize("item, message", [
    ("optimizer.lr", "expected key.path=value"),
    ("optimizer.lr.value=1", "lr is not a section"),
])
def test_malformed_set_is_explained(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_override({"optimizer": {"lr": 0.1}}, item)


def test_override_error_names_the_overridden_field(tmp_path, toy_pm):
    msg = error_of(ConfigError, load_recipe, write(tmp_path, BASE),
                   overrides=["head.num_classes=0"], pm=toy_pm)
    assert "head.num_classes: Input should be greater than 0" in msg


def test_recipe_plugins_are_loaded_before_validation(tmp_path, toy_pm):
    plugin = tmp_path / "my_strategies.py"
    plugin.write_text(
        "import thawkit\n\n"
        "class Probe(thawkit.Strategy):\n"
        "    name = 'probe'\n\n"
        "    def phases(self, layout, model):\n"
        "        return [thawkit.Phase(0, layout.head.params)]\n\n"
        "@thawkit.hookimpl\n"
        "def thawkit_register_strategies(register):\n"
        "    register(Probe)\n")
    data = {**BASE, "strategy": {"name": "probe"}, "plugins": [str(plugin)]}
    assert load_recipe(write(tmp_path, data), pm=toy_pm).strategy.name == "probe"
    bad = {**BASE, "plugins": [str(tmp_path / "missing.py")]}
    msg = error_of(thawkit.PluginError, load_recipe, write(tmp_path, bad), pm=toy_pm)
    assert "missing.py" in msg and "does not exist" in msg


# --------------------------------------------------------------------- schema
def test_schema_has_one_alternative_per_strategy(toy_pm):
    class Plugin:
        @thawkit.hookimpl
        def thawkit_register_strategies(self, register):
            class Mine(thawkit.Strategy):
                name = "mine"
                description = "my strategy"

                def phases(self, layout, model):
                    return [thawkit.Phase(0, layout.head.params)]
            register(Mine)

    toy_pm.register(Plugin(), name="mine")
    schema = recipe_json_schema(toy_pm)
    strategy = schema["properties"]["strategy"]
    names = toy_pm.strategies.names()
    assert "mine" in names
    assert len(strategy["oneOf"]) == len(names)
    assert sorted(strategy["discriminator"]["mapping"]) == names
    gradual = schema["$defs"][strategy["discriminator"]["mapping"]["gradual"].split("/")[-1]]
    assert {"name", "every", "start", "phases", "norm"} <= set(gradual["properties"])
    assert gradual["additionalProperties"] is False
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"backbone", "strategy"}
    assert schema["$schema"].startswith("https://json-schema.org/")
