"""Paths resolve where the docs say (issue 22): a recipe's relative ``.py`` plugin is found next to
the recipe from any working directory, by ``train`` and by ``--resume``, because the run's own
``recipe.yaml`` keeps resolved paths."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from test_cli import run
from test_train import make_data, recipe_dict, write_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_train_and_resume_from_another_working_directory(tmp_path):
    project = tmp_path / "project" / "recipes"
    project.mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "custom_strategy.py", project / "my_strategy.py")
    make_data(tmp_path / "project")
    d = recipe_dict(Path("project"), Path("runs/r"), strategy={"name": "every-other"})
    d["plugins"] = ["my_strategy.py"]  # next to the recipe, as docs/recipes.md says
    write_recipe(project / "recipe.yaml", d)
    # from the folder above the project: the recipe's plugin is not in the working directory
    result = run("train", "project/recipes/recipe.yaml", "--stop-after", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "stopped after 1 of 2 epochs" in result.stdout, result.stdout + result.stderr
    saved = yaml.safe_load((tmp_path / "runs" / "r" / "recipe.yaml").read_text())
    assert saved["plugins"] == [str(project / "my_strategy.py")]
    assert saved["data"]["train"] == str(tmp_path / "project" / "train")
    # and from elsewhere again, with --resume
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run("train", "--resume", "../runs/r", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "finished 2 epochs" in result.stdout, result.stdout
    # naming the recipe as well (its data folders are relative to the working directory)
    result = run("train", "project/recipes/recipe.yaml", "--resume", "runs/r", cwd=tmp_path)
    assert result.returncode == 0 and "already finished" in result.stdout, result.stderr
