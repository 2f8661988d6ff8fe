"""thawkit train: two-epoch runs on a tiny ImageFolder, the run directory, bad data, NaN stop,
predict and export."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

SPEC_NAME = "thawkit.plugins.train.demo_model:small_cnn"
CLASSES = ("cat", "dog", "eel")


def write_folder(root: Path, classes=CLASSES, per_class: int = 6, size: int = 20, seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: random RGB images, a class-dependent tint so they are learnable."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 120, (size, size, 3))
            a[..., c % 3] += 120
            Image.fromarray(a.astype("uint8")).save(root / name / f"{i}.png")
    return root


def make_data(tmp: Path, classes=CLASSES) -> Path:
    write_folder(tmp / "train", classes, 6, seed=1)
    write_folder(tmp / "val", classes, 3, seed=2)
    return tmp


def recipe_dict(data: Path, out: Path, /, **sections) -> dict:
    d = {
        "backbone": {"source": "python", "name": SPEC_NAME, "kwargs": {"width": 4}},
        "strategy": {"name": "head-only"},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "data": {"train": str(data / "train"), "val": str(data / "val"), "image_size": 16,
                 "batch_size": 4},
        # bit-identical resume is promised on CPU; a GPU machine runs these tests on CPU too
        "train": {"epochs": 2, "deterministic": True, "device": "cpu", "output": str(out)},
    }
    for key, value in sections.items():
        d[key] = {**d.get(key, {}), **value}
    return d


def write_recipe(path: Path, d: dict) -> Path:
    path.write_text(yaml.safe_dump(d))
    return path


def load(d: dict, pm):
    from thawkit.recipe import validate_recipe

    return validate_recipe(d, where="test", pm=pm)



@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One two-epoch gradual run with head dropout, shared by the read-only tests below."""
    import thawkit
    from thawkit.plugins.train import train

    tmp = tmp_path_factory.mktemp("run")
    data = make_data(tmp)
    d = recipe_dict(data, tmp / "run", strategy={"name": "gradual", "every": 1},
                    head={"dropout": 0.2})
    pm = thawkit.get_plugin_manager(entrypoints=False)
    outcome = train(load(d, pm), log=lambda s: None)
    assert outcome.status == "finished"
    return tmp / "run", data


def test_two_epoch_run_writes_the_run_directory(finished_run):
    from safetensors.torch import load_file

    run, _ = finished_run
    for name in ("recipe.yaml", "plan.json", "data.json", "metrics.jsonl", "curves.png",
                 "model.safetensors", "best.safetensors", "checkpoint.pt", "run.json"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp"))
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["head"]["num_classes"] == 3  # inferred from the data
    assert json.loads((run / "data.json").read_text())["classes"] == list(CLASSES)
    plan = json.loads((run / "plan.json").read_text())
    assert plan["strategy"] == "gradual" and len(plan["phases"]) >= 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # counted from 1, as printed
    assert [r["phase"] for r in rows] == [0, 1]
    assert rows[0]["trainable_params"] < rows[1]["trainable_params"]
    for r in rows:
        assert {"lrs", "train_loss", "val_loss", "val_top1", "seconds", "phase_label"} <= set(r)
        assert "val_top5" not in r  # 3 classes
        assert set(r["lrs"]) >= {"head", "block3"}
        assert 0 <= r["val_top1"] <= 1
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["epochs_done"] == 2
    final, best = load_file(str(run / "model.safetensors")), load_file(str(run / "best.safetensors"))
    # best holds what the two epochs could change (head, then block3, BatchNorm statistics of
    # block3 included); the rest is the start, which model.safetensors completes
    assert {"fc.1.weight", "block3.0.weight", "block3.1.running_mean"} <= set(best) < set(final)
    assert not any(k.startswith(("stem.", "block1.", "block2.")) for k in best)


def test_every_file_of_a_run_directory_is_named_by_rundir(finished_run):
    """RunDir owns the run directory's layout: each file a run writes is one of its names, and
    its paths are the files the run wrote."""
    from thawkit.plugins.train.rundir import RunDir

    run, _ = finished_run
    names = {v for k, v in vars(RunDir).items() if k.isupper() and isinstance(v, str)}
    written = {p.name for p in run.iterdir()}
    assert written <= names, written - names
    files = RunDir(run)
    assert set(RunDir.FILES) - {RunDir.LOCK} <= written
    assert files.checkpoint == run / "checkpoint.pt" and files.weights(best=True) == run / "best.safetensors"
    assert files.recipe.is_file() and files.metrics.is_file() and files.status.is_file()


def test_gradual_lrs_follow_one_schedule_across_phases(finished_run):
    run, _ = finished_run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # every group is scheduled from the start: a block thawed at epoch 1 gets the same lr as the
    # head at that moment, not its initial one
    assert rows[1]["lrs"]["block3"] == rows[1]["lrs"]["head"]
    assert rows[0]["lrs"]["head"] < 0.01  # still warming up at epoch 0


def test_cli_train_via_parser(tmp_path, capsys):
    from thawkit.plugins.cli import main

    data = make_data(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(data, tmp_path / "unused"))
    rc = main(["train", str(recipe), "--output", str(tmp_path / "cli"), "--epochs", "1",
               "--set", "optimizer.lr=0.005", "--set", "schedule.warmup_epochs=0"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "finished 1 epochs" in out
    saved = yaml.safe_load((tmp_path / "cli" / "recipe.yaml").read_text())
    assert saved["optimizer"]["lr"] == 0.005 and saved["train"]["epochs"] == 1
    # a second run into the same directory is refused; nothing is overwritten
    before = (tmp_path / "cli" / "model.safetensors").read_bytes()
    rc = main(["train", str(recipe), "--output", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert rc == 2 and "already holds a run" in err and "--resume" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "cli" / "model.safetensors").read_bytes() == before


def test_cli_output_is_a_folder_name_even_when_it_reads_as_a_number(tmp_path, monkeypatch, capsys):
    """``--output 2024`` names the folder 2024: it used to be read as YAML, an integer, and the
    run refused with "train.output: Input should be a valid string"."""
    from thawkit.plugins.cli import main

    data = make_data(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(data, tmp_path / "unused"))
    monkeypatch.chdir(tmp_path)
    for name in ("2024", "0755", "null"):
        rc = main(["train", str(recipe), "--output", name, "--epochs", "1",
                   "--set", "schedule.warmup_epochs=0"])
        assert rc == 0, capsys.readouterr().err
        assert json.loads((tmp_path / name / "run.json").read_text())["status"] == "finished"
        assert yaml.safe_load((tmp_path / name / "recipe.yaml").read_text())["train"]["output"] == \
            str(tmp_path / name)
    assert not (tmp_path / "unused").exists()


# --------------------------------------------------------------- bad data
def _bad(tmp_path, pm, mutate, **sections):
    from thawkit.plugins.train import train

    data = make_data(tmp_path)
    mutate(data)
    d = recipe_dict(data, tmp_path / "run", **sections)
    with pytest.raises(Exception) as info:
        train(load(d, pm), log=lambda s: None)
    assert not (tmp_path / "run").exists(), "nothing is written before the data checks pass"
    return info


def test_missing_train_directory(tmp_path, pm):
    from thawkit.errors import ConfigError

    info = _bad(tmp_path, pm, lambda d: shutil.rmtree(d / "train"))
    assert info.type is ConfigError
    assert "data.train" in str(info.value) and "does not exist" in str(info.value)


def test_missing_val_field(tmp_path, pm):
    from thawkit.errors import ConfigError

    info = _bad(tmp_path, pm, lambda d: None, data={"val": None})
    assert info.type is ConfigError and "data.val: required" in str(info.value)


def test_empty_directory(tmp_path, pm):
    from thawkit.errors import ConfigError

    def empty(d):
        shutil.rmtree(d / "val")
        (d / "val").mkdir()
    info = _bad(tmp_path, pm, empty)
    assert info.type is ConfigError and "no class sub-directories" in str(info.value)


def test_class_directory_without_images(tmp_path, pm):
    from thawkit.errors import ConfigError

    def hollow(d):
        for f in (d / "train" / "dog").iterdir():
            f.unlink()
    info = _bad(tmp_path, pm, hollow)
    assert info.type is ConfigError
    assert "without images" in str(info.value) and "dog" in str(info.value)


def test_val_classes_differ(tmp_path, pm):
    from thawkit.errors import ConfigError

    info = _bad(tmp_path, pm, lambda d: (d / "val" / "dog").rename(d / "val" / "fox"))
    msg = str(info.value)
    assert info.type is ConfigError and "missing in val: dog" in msg and "not in train: fox" in msg


def test_num_classes_disagrees(tmp_path, pm):
    from thawkit.errors import ConfigError

    info = _bad(tmp_path, pm, lambda d: None, head={"num_classes": 4})
    msg = str(info.value)
    assert info.type is ConfigError and "head.num_classes is 4" in msg and "3 classes" in msg


def test_corrupt_image_names_the_file(tmp_path, pm):
    from thawkit.plugins.train import DataError

    bad = {}

    def corrupt(d):
        bad["file"] = d / "train" / "eel" / "3.png"
        bad["file"].write_bytes(b"not an image at all")
    info = _bad(tmp_path, pm, corrupt)
    assert info.type is DataError and str(bad["file"]) in str(info.value)


def test_truncated_image_stops_the_run_naming_it(tmp_path, pm):
    """A file whose header reads but whose pixels do not: found when first loaded."""
    from thawkit.plugins.train import DataError, train

    data = make_data(tmp_path)
    file = data / "val" / "cat" / "1.png"
    file.write_bytes(file.read_bytes()[:60])
    d = recipe_dict(data, tmp_path / "run")
    with pytest.raises(DataError) as info:
        train(load(d, pm), log=lambda s: None)
    assert str(file) in str(info.value)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"
    # the advice leads somewhere though no checkpoint was written yet: fix the file, --resume
    assert "--resume" in str(info.value) and not (tmp_path / "run" / "checkpoint.pt").exists()
    from thawkit.plugins.train import resume

    write_folder(data / "val", CLASSES, 3, seed=2)
    assert resume(tmp_path / "run", pm=pm, log=lambda s: None).status == "finished"


def test_cli_bad_data_is_one_line_exit_2(tmp_path, capsys):
    from thawkit.plugins.cli import main

    data = make_data(tmp_path)
    (data / "val" / "dog").rename(data / "val" / "fox")
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(data, tmp_path / "run"))
    rc = main(["train", str(recipe)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "data.val" in err


# -------------------------------------------------------------------- NaN
def test_nan_loss_stops_naming_epoch_and_step_and_keeps_checkpoint(tmp_path, pm):
    import torch
    from thawkit.plugins.train import DivergedError, train
    from thawkit.plugins.train.checkpoint import load_checkpoint

    data = make_data(tmp_path)
    d = recipe_dict(data, tmp_path / "run")

    def poison(trainer):  # after step 2 of epoch 2 the weights turn NaN: step 3's loss is NaN
        if trainer.state.epoch == 1 and trainer.state.step == 2:
            with torch.no_grad():
                trainer.s.model.fc.weight.fill_(float("nan"))
    with pytest.raises(DivergedError) as info:
        train(load(d, pm), log=lambda s: None, on_step=poison)
    msg = str(info.value)
    assert "epoch 2, step 3" in msg and "nan" in msg and "checkpoint" in msg
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["epoch"] == 1 and ckpt["step"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "model.safetensors").exists()
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "failed" and "epoch 2, step 3" in status["message"]


# --------------------------------------------------------- predict, export
def test_predict_prints_top_classes_by_name(finished_run, capsys):
    from thawkit.plugins.cli import main
    from thawkit.plugins.train import predict

    run, data = finished_run
    images = [str(data / "val" / "eel" / "0.png"), str(data / "val" / "cat" / "1.png")]
    results = predict(run, images, top_k=2)
    assert [f for f, _ in results] == images
    for _, top in results:
        assert len(top) == 2 and {n for n, _ in top} <= set(CLASSES)
        assert top[0][1] >= top[1][1]
    rc = main(["predict", str(run), *images, "--top-k", "5"])
    out = capsys.readouterr().out
    assert rc == 0 and images[0] in out
    assert sum(name in out for name in CLASSES) == 3  # top-5 of 3 classes shows all 3


def test_predict_errors(finished_run, tmp_path, capsys):
    from thawkit.plugins.cli import main

    run, _ = finished_run
    assert main(["predict", str(run), str(tmp_path / "nope.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), str(tmp_path / "nope.png")]) == 2
    assert "not a thawkit run directory" in capsys.readouterr().err


def test_export_round_trip_gives_the_same_logits(finished_run, tmp_path, capsys):
    import thawkit
    import torch
    from thawkit.plugins.cli import main
    from thawkit.plugins.train import load_exported, load_run_model

    run, _ = finished_run
    out = tmp_path / "exported.safetensors"
    assert main(["export", str(run), str(out)]) == 0
    config = json.loads(out.with_suffix(".json").read_text())
    assert config["classes"] == list(CLASSES)
    # head dropout was 0.2: the exported file still rebuilds with plain load_backbone
    model = thawkit.load_backbone(config["spec"], weights=str(out), **config["load_options"]).eval()
    trained = load_run_model(run).model
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
        again, meta = load_exported(out)
        assert torch.equal(again(x), trained(x))
    # the JSON beside the weights, and where the export is (its preprocessing's paths are relative)
    assert meta == {**config, "directory": str(tmp_path.resolve())} and config["reader"] == "images"
    assert main(["export", str(run), str(out)]) == 2  # never overwrites without --force
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(run), str(tmp_path / "dir"), "--best"]) == 0
    assert (tmp_path / "dir" / "model.safetensors").is_file()
    assert (tmp_path / "dir" / "config.json").is_file()


def test_exported_transform_is_what_predict_uses(finished_run, tmp_path):
    """A user's own inference with load_exported + exported_transform gives predict's tensors and
    probabilities exactly, from a file path or an image already opened (any PIL mode)."""
    import thawkit
    import torch
    from PIL import Image
    from thawkit.plugins.train import (
        export_run,
        exported_batch,
        exported_transform,
        load_exported,
        predict,
    )
    from thawkit.plugins.train.data import Preprocess, preprocess_images
    from thawkit.plugins.train.session import read_data_info

    run, data = finished_run
    weights, _ = export_run(run, tmp_path / "exported.safetensors")
    model, config = load_exported(weights)
    transform = exported_transform(config)
    images = [str(data / "val" / "eel" / "0.png"), str(data / "val" / "cat" / "1.png")]
    used = preprocess_images(images, Preprocess.from_dict(read_data_info(run)["preprocess"]))
    assert torch.equal(torch.stack([transform(f) for f in images]), used)
    with Image.open(images[0]) as opened:
        assert torch.equal(transform(opened), used[0])
        assert torch.equal(transform(opened.convert("RGBA")), used[0])
    with torch.no_grad():
        probs = model(torch.stack([transform(f) for f in images])).softmax(1)
    for (file, top), image, row in zip(predict(run, images, top_k=3), images, probs):
        assert file == image
        assert [name for name, _ in top] == [config["classes"][i] for i in row.argsort(descending=True)]
        assert [p for _, p in top] == pytest.approx(sorted(row.tolist(), reverse=True), abs=1e-6)
    # the batch form is predict's batch; an older export (no 'reader') is an image export
    assert torch.equal(exported_batch(config)(images), used)
    with Image.open(images[1]) as opened:
        assert torch.equal(exported_batch(config)([images[0], opened]), used)
    older = {k: v for k, v in config.items() if k not in ("reader", "directory")}
    assert torch.equal(exported_batch(older)(images), used)
    with pytest.raises(thawkit.ConfigError, match="preprocess"):
        exported_transform({"spec": config["spec"]})
    # the snippet docs/training.md shows does the same
    import runpy

    snippet = runpy.run_path(str(Path(__file__).parent.parent / "docs" / "snippets" / "classify_export.py"))
    assert snippet["classify"](str(weights), images) == [top[0][0] for _, top in predict(run, images)]


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, contextlib, io, thawkit\n"
            "from thawkit.plugins.cli import build_parser, main\n"
            "p = build_parser(thawkit.get_plugin_manager())\n"
            "p.parse_args(['train', 'r.yaml', '--stop-after', '1'])\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['--help'])\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resolved_recipe_keeps_the_architecture_options_of_published_weights(tmp_path, pm):
    """predict/export rebuild with weights=None: options that published weights implied
    (googlenet's transform_input, ...) go into the run's recipe; the user's own kwargs win."""
    from thawkit.plugins.train.session import resolved_recipe

    data = recipe_dict(tmp_path, tmp_path / "run")
    data["backbone"]["kwargs"] = {"width": 16, "aux_logits": True}
    recipe = load(data, pm)
    out = resolved_recipe(recipe, num_classes=3, run_dir=tmp_path / "run",
                          arch={"transform_input": True, "aux_logits": False})
    assert out.backbone.kwargs == {"transform_input": True, "aux_logits": True, "width": 16}
    assert out.head.num_classes == 3


# ------------------------------------------- one plugin manager per recipe (issue 21)
RECIPE_PLUGIN = '''
import torch
from thawkit import DataConfig, hookimpl


def halved(optimizer, *, epochs, steps_per_epoch, warmup_epochs):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)


@hookimpl
def thawkit_register_schedules(register):
    register("halved", halved)


@hookimpl
def thawkit_data_config(model, spec):
    return DataConfig(input_size=(3, 16, 16), mean=(0.25, 0.25, 0.25), std=(0.5, 0.5, 0.5))
'''


def test_a_recipe_with_a_plugin_file_trains_with_its_schedule_and_data_config(tmp_path):
    """A recipe naming ``plugins: [file.py]``, loaded without ``pm=``, carries its own manager;
    training it through the library uses that manager for the schedule and the data config."""
    import thawkit
    from thawkit.plugins.train import train

    data = make_data(tmp_path)
    (tmp_path / "my_plugin.py").write_text(RECIPE_PLUGIN)
    d = recipe_dict(data, tmp_path / "run", schedule={"name": "halved", "warmup_epochs": 0})
    d["plugins"] = [str(tmp_path / "my_plugin.py")]  # (a relative path is issue 22's)
    recipe = thawkit.load_recipe(write_recipe(tmp_path / "recipe.yaml", d))
    assert recipe.plugin_manager is not thawkit.default_plugin_manager()
    outcome = train(recipe, log=lambda s: None)
    assert outcome.status == "finished"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(lr == pytest.approx(0.005) for r in rows for lr in r["lrs"].values())
    info = json.loads((tmp_path / "run" / "data.json").read_text())
    assert info["preprocess"]["mean"] == [0.25] * 3 and info["preprocess"]["std"] == [0.5] * 3


@pytest.mark.parametrize("call", ["train", "probe"])
def test_the_pm_keyword_of_a_function_given_a_recipe_is_deprecated(tmp_path, pm, call):
    """``pm=`` beside a recipe still works for a release, and warns: the recipe's own manager
    (``recipe.plugin_manager``) is the one used."""
    from thawkit import ConfigError
    from thawkit.plugins.train import train
    from thawkit.plugins.train.probe import probe

    recipe = load(recipe_dict(make_data(tmp_path), tmp_path / "run"), pm)
    with pytest.warns(DeprecationWarning, match=rf"{call}\(pm=...\) is deprecated.*recipe.plugin_manager"), \
            pytest.raises(ConfigError):
        if call == "train":
            train(recipe, pm=pm, stop_after=0)
        else:
            probe(recipe, [], pm=pm)
    assert not (tmp_path / "run").exists()


def test_a_run_of_such_a_recipe_resumes_with_its_own_manager(tmp_path, clean_env):
    """A run directory is enough: resume reads the run's recipe once, and the manager that
    recipe gets (with its plugin file) builds the rest; the shared manager stays as it was."""
    import thawkit
    from thawkit.plugins.train import resume, train
    from thawkit.plugins.train.schedules import schedule_registry

    data = make_data(tmp_path)
    (tmp_path / "my_plugin.py").write_text(RECIPE_PLUGIN)
    d = recipe_dict(data, tmp_path / "run", schedule={"name": "halved", "warmup_epochs": 0})
    d["plugins"] = [str(tmp_path / "my_plugin.py")]
    recipe = thawkit.load_recipe(write_recipe(tmp_path / "recipe.yaml", d))
    assert train(recipe, stop_after=1, log=lambda s: None).status == "stopped"
    assert resume(tmp_path / "run", log=lambda s: None).status == "finished"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(lr == pytest.approx(0.005) for r in rows for lr in r["lrs"].values())
    assert "halved" not in schedule_registry(thawkit.default_plugin_manager())
