"""``thawkit train`` with the feature cache: on where exact and worth it (first line, plan.json,
``thawkit plan``), equal to the uncached run, rebuilt when a gradual phase moves the boundary,
memory-mapped beyond its budget, bit-identical on resume, and off with the reason elsewhere."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_resume import assert_same_run, metrics
from test_train import load, make_data, recipe_dict, write_recipe

import thawkit


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


def run(tmp_path, data, pm, name, /, **sections):
    """A finished run with augmentation off (the cache's condition); its log lines."""
    from thawkit.plugins.train import train

    sections["data"] = {"augment": False, **sections.get("data", {})}
    lines: list[str] = []
    outcome = train(load(recipe_dict(data, tmp_path / name, **sections), pm), log=lines.append)
    assert outcome.status == "finished", outcome.message
    return tmp_path / name, lines


def assert_close_runs(a: Path, b: Path) -> None:
    """The same training within float tolerance: metrics and final weights."""
    for ra, rb in zip(metrics(a), metrics(b), strict=True):
        assert ra.keys() == rb.keys()
        for key, value in ra.items():
            if isinstance(value, float):
                assert rb[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
            else:
                assert rb[key] == value, key
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("sections", [
    {"strategy": {"name": "head-only"}, "backbone": {"kwargs": {"width": 4, "dropout": 0.3}}},
    {"strategy": {"name": "last-block"}, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
], ids=["head-only-with-dropout", "last-block"])
def test_cached_run_equals_uncached(tmp_path, data, pm, sections):
    cached, lines = run(tmp_path, data, pm, "cached", train={"epochs": 3}, **sections)
    plain, plain_lines = run(tmp_path, data, pm, "plain", train={"epochs": 3, "cache": "off"}, **sections)
    block = "head" if sections["strategy"]["name"] == "head-only" else "block3"
    assert f"; cache on for epochs 1-3: features below {block!r}" in lines[0]
    assert "in RAM" in lines[0]
    assert plain_lines[0].endswith("; cache off for epochs 1-3: train.cache is off")
    plan = json.loads((cached / "plan.json").read_text())["cache"]
    assert [(d["on"], d["block"], d["in_ram"]) for d in plan] == [(True, block, [True, True])]
    assert not (cached / "cache").exists()
    assert_close_runs(plain, cached)


def test_gradual_rebuilds_the_cache_at_each_boundary(tmp_path, data, pm):
    """Phases of two epochs each: the cache below the head, then rebuilt below block3 and block2,
    then off when the frozen part (stem and block1) is too cheap to pay."""
    sections = {"strategy": {"name": "gradual", "every": 2}, "train": {"epochs": 8},
                "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}
    cached, lines = run(tmp_path, data, pm, "cached", **sections)
    plain, _ = run(tmp_path, data, pm, "plain", **{**sections, "train": {"epochs": 8, "cache": "off"}})
    notes = [line for line in lines if line.startswith("cache")]
    assert "cache on for epochs 1-2: features below 'head'" in lines[0]
    assert notes[0].startswith("cache on for epochs 3-4: features below 'block3'")
    assert notes[1].startswith("cache on for epochs 5-6: features below 'block2'")
    assert notes[2].startswith("cache off for epochs 7-8: the frozen part below 'block1' does 18% of "
                               "the forward FLOPs, under 25%")
    assert [r["phase"] for r in metrics(cached)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert_close_runs(plain, cached)


def test_memory_mapped_beyond_the_budget(tmp_path, data, pm):
    seen = []

    def watch(trainer):
        seen.append(sorted(p.name.split("-")[0] for p in (trainer.s.run_dir / "cache").iterdir()))

    from thawkit.plugins.train import train

    d = recipe_dict(data, tmp_path / "mapped", data={"augment": False},
                    train={"epochs": 2, "cache_memory": "100B"})
    lines: list[str] = []
    assert train(load(d, pm), log=lines.append, on_step=watch).status == "finished"
    assert "in a memory-mapped file" in lines[0]
    assert seen and all(s == ["train", "val"] for s in seen)
    assert not (tmp_path / "mapped" / "cache").exists()  # deleted when the run ends
    in_ram, _ = run(tmp_path, data, pm, "ram", train={"epochs": 2})
    assert_same_run(in_ram, tmp_path / "mapped")  # the same bits, from RAM or from the file


def test_no_disk_space_turns_the_cache_off_naming_the_size(tmp_path, data, pm, monkeypatch):
    from thawkit.plugins.train import cache

    monkeypatch.setattr(cache, "_free_disk", lambda path: 10)
    _, lines = run(tmp_path, data, pm, "full-disk", train={"epochs": 2, "cache_memory": 0})
    assert "cache off for epochs 1-2: the features need 1.7 KB" in lines[0]
    assert "train.cache_dtype: float16" in lines[0]


@pytest.mark.parametrize("stop_after", [1, 2, 3])
def test_resumed_cached_run_is_bit_identical(tmp_path, data, pm, stop_after):
    """Stopped inside a cached phase (1), at the boundary (2) or inside the second cached phase
    (3): the cache is rebuilt on resume, its first line names the phase the resumed epoch runs
    in, and the run ends bit-identical to an uninterrupted cached one."""
    from thawkit.plugins.train import resume, train

    sections = {"strategy": {"name": "gradual", "every": 2}, "train": {"epochs": 4},
                "backbone": {"kwargs": {"width": 4, "dropout": 0.3}}, "data": {"augment": False}}
    straight, lines = run(tmp_path, data, pm, "straight", **sections)
    assert "cache on" in lines[0]
    d = recipe_dict(data, tmp_path / "resumed", **sections)
    assert train(load(d, pm), log=lambda _: None, stop_after=stop_after).status == "stopped"
    resumed_lines: list[str] = []
    assert resume(tmp_path / "resumed", pm=pm, log=resumed_lines.append).status == "finished"
    assert f"; cache on for epochs {1 if stop_after < 2 else 3}-" in resumed_lines[0]
    assert_same_run(straight, tmp_path / "resumed")


#: a ViT with drop-path and dropout in its blocks (random weights: the test is about exactness)
DROPOUT_VIT = {"source": "timm", "name": "vit_tiny_patch16_224", "random_init_ok": True,
               "kwargs": {"img_size": 16, "patch_size": 8, "depth": 2, "drop_path_rate": 0.3,
                          "proj_drop_rate": 0.2}}


def test_frozen_dropout_off_caches_a_vit_with_drop_path_exactly_and_resumes(tmp_path, data, pm):
    """With the strategy's ``frozen_dropout: off`` the frozen blocks of a ViT with drop-path are
    deterministic: the cache is on in both gradual phases, the cached run equals the uncached
    one, a resumed run is bit-identical, and what stays frozen is the starting tensors."""
    from thawkit.plugins.interpolation import state_digest
    from thawkit.plugins.train import resume, train

    sections = {"backbone": DROPOUT_VIT, "train": {"epochs": 4},
                "strategy": {"name": "gradual", "every": 2, "frozen_dropout": "off"}}
    cached, lines = run(tmp_path, data, pm, "cached", **sections)
    assert "cache on for epochs 1-2: features below 'head'" in lines[0]
    assert any(line.startswith("cache on for epochs 3-4: features below 'blocks.1'") for line in lines)
    plain, _ = run(tmp_path, data, pm, "plain", **{**sections, "train": {"epochs": 4, "cache": "off"}})
    assert_close_runs(plain, cached)
    d = recipe_dict(data, tmp_path / "resumed", **sections, data={"augment": False})
    assert train(load(d, pm), log=lambda _: None, stop_after=3).status == "stopped"
    assert resume(tmp_path / "resumed", pm=pm, log=lambda _: None).status == "finished"
    assert_same_run(cached, tmp_path / "resumed")
    final = load_file(str(cached / "model.safetensors"))
    start = json.loads((cached / "start.json").read_text())["tensors"]
    frozen = [k for k in start if k.startswith(("blocks.0.", "patch_embed.", "pos_embed", "cls_token"))]
    assert frozen and all(state_digest(final, [k]) == start[k] for k in frozen)
    assert state_digest(final, ["blocks.1.mlp.fc1.weight"]) != start["blocks.1.mlp.fc1.weight"]


def test_float16_storage_trains_close_to_float32(tmp_path, data, pm):
    exact, _ = run(tmp_path, data, pm, "f32", train={"epochs": 2})
    half, lines = run(tmp_path, data, pm, "f16", train={"epochs": 2, "cache_dtype": "float16"})
    assert "cache on" in lines[0]
    for a, b in zip(metrics(exact), metrics(half)):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-2)


@pytest.mark.parametrize("sections, reason", [
    ({"data": {"augment": True}}, "data.augment is true"),
    ({"strategy": {"name": "head-only", "norm": "train"}}, "norm: train updates the running statistics"),
    ({"strategy": {"name": "last-block", "norm": "affine"}}, "norm: affine trains"),
    ({"strategy": {"name": "gradual", "every": 1}}, "a phase of 1 epoch"),
    ({"strategy": {"name": "full"}}, "block 'stem', the first, trains"),
    ({"backbone": {"kwargs": {"width": 4, "dropout": 0.3}}, "strategy": {"name": "last-block"},
      "head": {"dropout": 0.0}}, None),
    ({"backbone": DROPOUT_VIT}, "proj_drop (Dropout p=0.2) in the frozen part is active in training, so "
                                "its output differs at every step; set strategy frozen_dropout: off"),
    ({"backbone": DROPOUT_VIT, "strategy": {"name": "head-only", "frozen_dropout": "off"}}, None),
])
def test_cache_off_with_the_reason(tmp_path, data, pm, sections, reason):
    from thawkit.plugins.train.cache import decide
    from thawkit.plugins.train.session import prepare, torch_flags_restored

    sections = {"data": {"augment": False}, "train": {"epochs": 2}, **sections}
    d = recipe_dict(data, tmp_path / "run", **sections)
    with torch_flags_restored():  # prepare() sets the run's determinism flags
        session = prepare(load(d, pm), run_dir=tmp_path / "run")
    first = session.cache[0]
    if reason is None:  # dropout above the boundary does not matter
        assert first.on, first.reason
    else:
        assert not first.on and reason in first.reason, first.reason
    assert decide(session.adapted, session.recipe, session.prep, n_train=18, n_val=9,
                  run_dir=tmp_path, device="cpu")[0].reason == first.reason


def test_plan_command_shows_the_cache(tmp_path, data, capsys):
    from thawkit.plugins.cli import main

    d = recipe_dict(data, tmp_path / "run", data={"augment": False},
                    strategy={"name": "gradual", "every": 2}, train={"epochs": 4})
    recipe = write_recipe(tmp_path / "r.yaml", d)
    thawkit.reset_plugin_manager()
    assert main(["plan", str(recipe)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == ("cache on for epochs 1-2: features below 'head' (16 values per image, 100% of "
                       "the forward FLOPs, 1.7 KB in RAM)")
    assert out[-1].startswith("cache on for epochs 3-4: features below 'block3' (256 values per image")
    assert main(["plan", str(recipe), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [c["block"] for c in plan["cache"]] == ["head", "block3"]
    assert not (tmp_path / "run").exists()  # planning writes nothing


def test_bad_cache_settings_name_the_field(tmp_path, data, pm):
    for value, field in [({"cache": "on"}, "train.cache: Input should be 'auto' or 'off'"),
                         ({"cache_memory": "lots"}, "train.cache_memory: Value error, expected auto"),
                         ({"cache_dtype": "int8"}, "train.cache_dtype: Input should be")]:
        with pytest.raises(thawkit.ConfigError, match=field.replace("(", r"\(")):
            load(recipe_dict(data, tmp_path / "x", train=value), pm)
    assert load(recipe_dict(data, tmp_path / "x", train={"cache_memory": "1.5 GiB"}),
                pm).train.cache_memory == int(1.5 * 2**30)


# ------------------------------------------------------------------- probe
def test_probe_sweeps_heads_equal_to_single_runs(tmp_path, data, pm):
    """One probe with three rates gives each head the training a cached ``thawkit train`` run with
    that rate gives (no dropout in the head): same metrics, same final head weights."""
    from thawkit.plugins.train.probe import probe, read_probe

    lrs = [0.003, 0.03, 0.3]
    sections = {"data": {"augment": False}, "train": {"epochs": 2}}
    lines: list[str] = []
    results = probe(load(recipe_dict(data, tmp_path / "probe", **sections), pm), lrs,
                    log=lines.append)
    assert [r.lr for r in results] == lrs and "probing 3 learning rates" in lines[0]
    assert "<- best" in lines[-1]
    saved = read_probe(tmp_path / "probe")
    heads = load_file(str(tmp_path / "probe" / "heads.safetensors"))
    for lr, result, record in zip(lrs, results, saved["results"]):
        single, _ = run(tmp_path, data, pm, f"lr{lr}", optimizer={"lr": lr}, **sections)
        rows = metrics(single)
        assert [e["val_top1"] for e in result.epochs] == [r["val_top1"] for r in rows]
        for e, r in zip(result.epochs, rows):
            assert e["val_loss"] == pytest.approx(r["val_loss"], rel=1e-5)
            assert e["train_loss"] == pytest.approx(r["train_loss"], rel=1e-5)
        assert record["final_top1"] == result.final_top1
        weights = load_file(str(single / "model.safetensors"))
        for name in ("fc.weight", "fc.bias"):
            torch.testing.assert_close(heads[f"lr={lr:g}/{name}"], weights[name])


@pytest.mark.parametrize("sections, message", [
    ({"strategy": {"name": "last-block"}}, "trains below the head (from block 'block3')"),
    ({"strategy": {"name": "gradual"}}, "has 5 phases"),
    ({"data": {"augment": True}}, "needs data.augment: false"),
    ({"strategy": {"name": "head-only", "norm": "train"}}, "cannot be cached: norm: train"),
])
def test_probe_refuses_what_it_cannot_cache(tmp_path, data, pm, sections, message):
    from thawkit.plugins.train.probe import probe

    sections = {"data": {"augment": False}, **sections}
    out = tmp_path / "p"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a folder that exists and is not empty stays
    with pytest.raises(thawkit.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        probe(load(recipe_dict(data, out, **sections), pm), [0.01])
    # refused before any run file was written (the lock is let go and left, as train leaves it)
    assert sorted(p.name for p in out.iterdir()) in (["notes.txt"], ["notes.txt", "run.lock"])
    with pytest.raises(thawkit.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        probe(load(recipe_dict(data, tmp_path / "new", **sections), pm), [0.01])
    assert not (tmp_path / "new").exists()  # a folder the probe made is taken back


def test_probe_takes_the_run_lock(tmp_path, data, pm):
    from thawkit.plugins.train.probe import probe
    from thawkit.plugins.train.rundir import RunDirError, run_lock

    out = tmp_path / "p"
    out.mkdir()
    recipe = load(recipe_dict(data, out, data={"augment": False}), pm)
    with run_lock(out), pytest.raises(RunDirError, match="in use by another thawkit process"):
        probe(recipe, [0.01], run_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]  # nothing written


def test_probe_command(tmp_path, data, capsys):
    from thawkit.plugins.cli import main

    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(data, tmp_path / "unused",
                                                           data={"augment": False}))
    thawkit.reset_plugin_manager()
    assert main(["probe", str(recipe), "--lr", "0.01", "--lr", "0.1", "--output",
                 str(tmp_path / "sweep"), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2 top1 lr 0.01:" in out and "lr 0.1:" in out
    assert json.loads((tmp_path / "sweep" / "probe.json").read_text())["lrs"] == [0.01, 0.1]
    with pytest.raises(SystemExit):  # --lr is required: argparse's usage error
        main(["probe", str(recipe)])
    assert "--lr" in capsys.readouterr().err
