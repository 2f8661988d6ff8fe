"""``thawkit plan`` is train's dry run (issue 22): every recipe that ``train`` refuses before its
first step, ``plan`` refuses too, with the same exit code and message; an exception the model
raises in the middle of a run is worded like the plan's; a freezing strategy on random weights
is a warning at plan and train time."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from test_train import make_data, recipe_dict, write_folder, write_recipe

from thawkit.plugins.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


def errors(capsys, command: str) -> str:
    """The one error line of ``command``, without its ``thawkit COMMAND: error:`` prefix."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    prefix = f"thawkit {command}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix):].strip()


def timm_backbone(name: str, **fields) -> dict:
    return {"source": "timm", "name": name, "kwargs": {}, **fields}


def cases(data: Path, tmp: Path) -> dict[str, tuple[dict, list[str]]]:
    """name: (recipe sections, words the message must hold)."""
    bad_image = write_folder(tmp / "bad", per_class=2)
    (bad_image / "dog" / "broken.png").write_bytes(b"not a png at all")
    empty = write_folder(tmp / "empty", per_class=2)
    (empty / "fox").mkdir()
    return {
        "missing data.train": ({"head": {"num_classes": 3},
                                "data": {"train": str(tmp / "nowhere")}},
                               ["data.train", "does not exist"]),
        "num_classes against the folders": ({"head": {"num_classes": 10}},
                                            ["head.num_classes is 10", "3 classes", "cat, dog, eel"]),
        "an unreadable image": ({"data": {"train": str(bad_image)}}, ["broken.png", "cannot be read"]),
        "an empty class folder": ({"data": {"train": str(empty)}}, ["without images", "fox"]),
        "timm weights DEFAULT": ({"backbone": timm_backbone("resnet18", weights="DEFAULT")},
                                 ["backbone.weights", "'DEFAULT'", "pretrained: true"]),
        "vit at 32 px": ({"backbone": timm_backbone("vit_tiny_patch16_224"),
                          "data": {"image_size": 32}},
                         ["timm:vit_tiny_patch16_224", "(2, 3, 32, 32)", "data.image_size: 32",
                          "backbone.kwargs: {img_size: 32}"]),
    }


@pytest.mark.parametrize("case", ["missing data.train", "num_classes against the folders",
                                  "an unreadable image", "an empty class folder",
                                  "timm weights DEFAULT", "vit at 32 px"])
def test_plan_refuses_what_train_refuses_in_the_same_words(case, data, tmp_path, capsys):
    sections, words = cases(data, tmp_path)[case]
    if "timm" in json.dumps(sections):
        pytest.importorskip("timm")
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_dict(data, run, **sections))
    assert main(["plan", str(recipe)]) == 2
    planned = errors(capsys, "plan")
    assert main(["train", str(recipe)]) == 2
    trained = errors(capsys, "train")
    assert planned == trained
    for word in words:
        assert word in planned, (word, planned)
    assert "failed in command" not in planned
    assert not run.exists()  # refused before anything was written


def test_the_fix_the_size_message_names_plans(data, tmp_path, capsys):
    pytest.importorskip("timm")
    d = recipe_dict(data, tmp_path / "run", data={"image_size": 32},
                    backbone=timm_backbone("vit_tiny_patch16_224", kwargs={"img_size": 32}))
    d["backbone"]["kwargs"] = {"img_size": 32}
    assert main(["plan", str(write_recipe(tmp_path / "recipe.yaml", d))]) == 0, capsys.readouterr().err


def test_plan_without_data_checks_the_rest(tmp_path, capsys):
    """``--no-data``: the folders are not here yet; the model's checks still run."""
    pytest.importorskip("timm")
    d = recipe_dict(tmp_path, tmp_path / "run", head={"num_classes": 3}, data={"image_size": 32},
                    backbone=timm_backbone("vit_tiny_patch16_224"))
    recipe = write_recipe(tmp_path / "recipe.yaml", d)
    assert main(["plan", str(recipe)]) == 2
    assert "data.train" in errors(capsys, "plan")
    assert main(["plan", str(recipe), "--no-data"]) == 2
    assert "backbone.kwargs: {img_size: 32}" in errors(capsys, "plan")
    d["data"]["image_size"] = 224
    assert main(["plan", str(write_recipe(recipe, d)), "--no-data"]) == 0


PICKY = '''
import torch
from torch import nn


class Picky(nn.Module):
    """Runs on the meta device (which cannot read a value), fails on real images of the wrong size."""

    img_size = 24

    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        if float(x.abs().sum()) >= 0:
            assert x.shape[-1] == self.img_size, f"Input height ({x.shape[-1]}) doesn't match model (24)."
        return self.fc(self.conv(x).mean((2, 3)))


def build(num_classes=3):
    return Picky(num_classes)
'''


@pytest.fixture
def picky(tmp_path, monkeypatch):
    (tmp_path / "picky_model.py").write_text(textwrap.dedent(PICKY))
    monkeypatch.syspath_prepend(str(tmp_path))
    return {"source": "python", "name": "picky_model:build", "kwargs": {}}


def test_an_exception_of_the_model_mid_run_names_model_shape_and_field(data, tmp_path, picky, capsys):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "recipe.yaml",
                          recipe_dict(data, run, backbone=picky, strategy={"name": "full"}))
    assert main(["train", str(recipe)]) == 2
    message = errors(capsys, "train")
    for word in ("python:picky_model:build", "(4, 3, 16, 16)", "data.image_size: 16",
                 "at epoch 1, step 1", "AssertionError: Input height (16) doesn't match model (24)",
                 "backbone.kwargs: {img_size: 16}", "data.image_size: 24"):
        assert word in message, (word, message)
    assert "failed in command" not in message
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "failed" and "picky_model:build" in status["message"]


# ------------------------------------------------------------ random backbones
def random_resnet(data: Path, out: Path, **backbone) -> dict:
    return recipe_dict(data, out, backbone={"source": "torchvision", "name": "resnet18",
                                            "weights": None, "kwargs": {}, **backbone},
                       train={"epochs": 1}, schedule={"warmup_epochs": 0})


WARNING = "starts from random weights (backbone.weights: null)"


def test_a_freezing_strategy_on_random_weights_is_a_warning_at_plan_time(data, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    d = random_resnet(data, tmp_path / "run")
    assert main(["plan", str(write_recipe(recipe, d))]) == 0
    out = capsys.readouterr().out
    [line] = [ln for ln in out.splitlines() if WARNING in ln]
    assert line.startswith("warning: torchvision:resnet18") and "head-only" in line
    assert "backbone.random_init_ok: true" in line and "backbone.weights: DEFAULT" in line
    try:
        import peft  # noqa: F401
    except ImportError:
        pass
    else:  # adapters train beside a frozen base: the same warning
        lora = {**d, "strategy": {"name": "lora", "rank": 4, "blocks": 1}}
        assert main(["plan", str(write_recipe(recipe, lora))]) == 0
        assert "strategy lora keeps" in capsys.readouterr().out
    for meant in ({"backbone": {**d["backbone"], "random_init_ok": True}},
                  {"strategy": {"name": "full"}}):
        assert main(["plan", str(write_recipe(recipe, {**d, **meant}))]) == 0
        assert WARNING not in capsys.readouterr().out, meant
    assert main(["plan", str(write_recipe(recipe, {**d, "backbone": {
        **d["backbone"], "random_init_ok": "perhaps"}}))]) == 2
    assert "backbone.random_init_ok" in errors(capsys, "plan")


def test_a_freezing_strategy_on_random_weights_is_a_warning_at_train_time(data, tmp_path, capsys):
    d = random_resnet(data, tmp_path / "run", name="squeezenet1_1")
    d["data"]["image_size"] = 48  # squeezenet needs more than 16 px
    assert main(["train", str(write_recipe(tmp_path / "recipe.yaml", d))]) == 0
    assert f"warning: torchvision:squeezenet1_1 {WARNING}" in capsys.readouterr().out
