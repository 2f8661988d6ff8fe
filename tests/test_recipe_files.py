"""The built-in recipe reader reads YAML 1.2 core-schema booleans: only true and false.

YAML 1.1 reads off/on/yes/no as booleans, so `train.cache: off`, `--set train.cache=off` and
`--output off` (a folder named off) were refused with "Input should be 'auto' or 'off'"."""
from __future__ import annotations

import pytest
import yaml
from test_train import make_data, recipe_dict, write_recipe

from thawkit.plugins.cli import main
from thawkit.plugins.recipe_files import parse_text


@pytest.mark.parametrize("word", ["off", "on", "yes", "no", "y", "n", "Off", "YES"])
def test_yaml_1_1_boolean_words_are_strings(word):
    assert parse_text(f"a: {word}\nb: [{word}]\n", "r.yaml") == {"a": word, "b": [word]}


@pytest.mark.parametrize("word,value", [("true", True), ("True", True), ("TRUE", True),
                                        ("false", False), ("False", False), ("FALSE", False)])
def test_true_and_false_are_booleans(word, value):
    assert parse_text(f"a: {word}\n", "r.yaml") == {"a": value}


def test_cache_off_in_a_recipe_file(tmp_path, capsys):
    data = make_data(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(data, tmp_path / "run"))
    recipe.write_text(recipe.read_text().replace("  deterministic: true\n",
                                                 "  deterministic: true\n  cache: off\n"))
    assert "cache: off" in recipe.read_text()  # unquoted, as a person writes it
    rc = main(["plan", str(recipe)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Input should be" not in captured.err


def test_cache_off_from_set(tmp_path, capsys):
    data = make_data(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(data, tmp_path / "run"))
    rc = main(["plan", str(recipe), "--set", "train.cache=off"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    # and a misspelt value is still refused, naming the field
    rc = main(["plan", str(recipe), "--set", "train.cache=of"])
    err = capsys.readouterr().err
    assert rc == 2 and "train.cache" in err and "Traceback" not in err


def test_output_folder_named_off(tmp_path, monkeypatch, capsys):
    data = make_data(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(data, tmp_path / "unused"))
    monkeypatch.chdir(tmp_path)
    rc = main(["train", str(recipe), "--output", "off", "--epochs", "1", "--set", "schedule.warmup_epochs=0"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert (tmp_path / "off" / "model.safetensors").is_file()
    saved = yaml.safe_load((tmp_path / "off" / "recipe.yaml").read_text())
    assert str(saved["train"]["output"]).endswith("off")
