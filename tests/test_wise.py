"""WiSE-FT: interpolation endpoints and mean, the head from the fine-tuned model, the run's
recorded starting weights, the end-of-run sweep, export --wise and its errors."""
from __future__ import annotations

import json
import shutil

import pytest
from test_train import SPEC_NAME, load, make_data, recipe_dict

SPEC = f"python:{SPEC_NAME}"


def quiet(_line: str) -> None:
    pass


def cnn(seed: int, num_classes: int = 5):
    import torch
    from thawkit.plugins.train.demo_model import small_cnn

    torch.manual_seed(seed)
    return small_cnn(num_classes=num_classes, width=4)


# ------------------------------------------------------------------ interpolate
@pytest.fixture
def pair(pm):
    """A start state and a "fine-tuned" state that differs everywhere but in block1 and the
    BatchNorm counters; the head is new (3 classes)."""
    import thawkit
    import torch

    adapted = thawkit.adapt(cnn(0), "full", num_classes=3, pm=pm)
    start = {k: v.clone() for k, v in adapted.model.state_dict().items()}
    tuned = {k: (v if k.startswith("block1.") or not v.is_floating_point()
                 else v + torch.randn_like(v)) for k, v in start.items()}
    for k, v in tuned.items():
        if k.endswith("num_batches_tracked"):
            tuned[k] = v + 7
    return start, tuned, adapted.layout


def test_endpoints_are_exact_and_half_is_the_mean(pair):
    import torch
    from thawkit.plugins.interpolation import interpolate

    start, tuned, layout = pair
    head = set(layout.head.params)
    assert head == {"fc.weight", "fc.bias"}
    start = {**start, "fc.weight": torch.zeros(5, 16)}  # the old head may differ: never used
    zero, one, half = (interpolate(start, tuned, a, head=layout) for a in (0, 1, 0.5))
    assert set(zero) == set(one) == set(half) == set(tuned)
    for k, v in tuned.items():
        assert torch.equal(one[k], v), k
        if k in head:
            assert torch.equal(zero[k], v) and torch.equal(half[k], v), k  # the fine-tuned head
        else:
            assert torch.equal(zero[k], start[k]), k
        if v.is_floating_point() and k not in head:
            assert torch.equal(half[k], (start[k] + v) / 2), k
    assert torch.equal(interpolate(start, tuned, 0.3, head=layout)["block1.0.weight"],
                       start["block1.0.weight"])  # unchanged by fine-tuning: bit-identical
    counter = "stem.1.num_batches_tracked"
    assert interpolate(start, tuned, 0.4, head=layout)[counter] == start[counter]
    assert interpolate(start, tuned, 0.6, head=layout)[counter] == tuned[counter]
    quarter = interpolate(start, tuned, 0.25, head=["fc"])
    assert torch.allclose(quarter["block3.0.weight"],
                          0.75 * start["block3.0.weight"] + 0.25 * tuned["block3.0.weight"])


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "half", True])
def test_alpha_outside_0_1_is_refused(pair, alpha):
    import thawkit
    from thawkit.plugins.interpolation import interpolate

    start, tuned, layout = pair
    with pytest.raises(thawkit.ConfigError, match="from 0 .* to 1"):
        interpolate(start, tuned, alpha, head=layout)


def test_start_that_does_not_fit_is_refused(pair):
    import thawkit
    import torch
    from thawkit.plugins.interpolation import interpolate

    start, tuned, layout = pair
    with pytest.raises(thawkit.WeightsError, match="lack 1 tensors.*block2.0.weight"):
        interpolate({k: v for k, v in start.items() if k != "block2.0.weight"}, tuned, 0.5,
                    head=layout)
    with pytest.raises(thawkit.WeightsError, match="shapes differ: block2.0.weight"):
        interpolate({**start, "block2.0.weight": torch.zeros(1)}, tuned, 0.5, head=layout)


# ------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Data, a "pretrained" weights file, an lp-ft run from it with a WiSE sweep, and a run
    from the builder's own (random) initialisation."""
    import thawkit
    from thawkit.plugins.train import train
    from thawkit.plugins.train.checkpoint import save_weights

    tmp = tmp_path_factory.mktemp("wise")
    data = make_data(tmp / "data")
    weights = tmp / "pretrained.safetensors"
    save_weights(weights, cnn(1).state_dict())
    pm = thawkit.get_plugin_manager(entrypoints=False)
    d = recipe_dict(data, tmp / "lpft", strategy={"name": "lp-ft", "probe_epochs": 1},
                    backbone={"weights": str(weights), "kwargs": {"width": 4, "num_classes": 5}},
                    train={"epochs": 2, "wise_alphas": [0.0, 0.5, 1.0]})
    lines: list[str] = []
    assert train(load(d, pm), log=lines.append).status == "finished"
    d = recipe_dict(data, tmp / "scratch", strategy={"name": "full"}, train={"epochs": 1},
                    schedule={"name": "constant", "warmup_epochs": 0})
    assert train(load(d, pm), log=quiet).status == "finished"
    return tmp, weights, lines


def _weights(path):
    from thawkit.plugins.weights import read_weights

    return read_weights(path)


def test_run_records_its_start_and_sweeps_at_the_end(runs):
    tmp, weights, lines = runs
    run = tmp / "lpft"
    record = json.loads((run / "start.json").read_text())
    assert record["file"] == str(weights.resolve()) and record["saved"] is None
    assert not (run / "start.safetensors").exists()  # rebuilt from the file when needed
    rows = json.loads((run / "run.json").read_text())["wise"]
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
    # alpha 1 is the fine-tuned model: the same val numbers as the last epoch
    assert (rows[2]["val_top1"], rows[2]["val_loss"]) == (last["val_top1"], last["val_loss"])
    assert rows[0]["val_loss"] != last["val_loss"]
    sweep = next(x for x in lines if x.startswith("WiSE-FT"))
    assert f"alpha 0.5 {100 * rows[1]['val_top1']:.2f}%" in sweep


def test_random_init_run_saves_its_start(runs, pm):
    import torch
    from thawkit.plugins.train.wise import start_state, wise_model

    tmp, _, _ = runs
    run = tmp / "scratch"
    record = json.loads((run / "start.json").read_text())
    assert record["saved"] == "start.safetensors" and record["weights"] is None
    saved = _weights(run / "start.safetensors")
    assert "fc.weight" not in saved and "stem.0.weight" in saved
    assert start_state(run, pm=pm).keys() == saved.keys()
    model = wise_model(run, 0.0, pm=pm).model.state_dict()
    tuned = _weights(run / "model.safetensors")
    assert all(torch.equal(model[k], v) for k, v in saved.items())
    assert torch.equal(model["fc.weight"], tuned["fc.weight"])
    assert not torch.equal(saved["stem.0.weight"], tuned["stem.0.weight"])


def test_export_wise_loads_into_the_plain_architecture(runs, tmp_path, capsys):
    import thawkit
    import torch
    from thawkit.plugins.cli import main

    tmp, weights, _ = runs
    run = tmp / "lpft"
    start, tuned = _weights(weights), _weights(run / "model.safetensors")
    for alpha in ("0", "0.5", "1"):
        out = tmp_path / f"wise{alpha}.safetensors"
        assert main(["export", str(run), str(out), "--wise", alpha]) == 0, capsys.readouterr().err
        config = json.loads(out.with_suffix(".json").read_text())
        assert config["wise_alpha"] == float(alpha)
        model = thawkit.load_backbone(config["spec"], weights=str(out), **config["load_options"])
        got = model.state_dict()
        assert torch.equal(got["fc.weight"], tuned["fc.weight"])  # the head: fine-tuned
        for k in ("stem.0.weight", "block3.1.running_var"):
            expected = {"0": start[k], "1": tuned[k], "0.5": (start[k] + tuned[k]) / 2}[alpha]
            assert torch.equal(got[k], expected), (alpha, k)
    assert main(["export", str(run), str(tmp_path / "plain.safetensors")]) == 0
    assert _weights(tmp_path / "plain.safetensors").keys() == got.keys()
    assert all(torch.equal(_weights(tmp_path / "plain.safetensors")[k], v) for k, v in got.items())


def test_export_wise_errors_are_clean(runs, tmp_path, capsys):
    from thawkit.plugins.cli import main

    tmp, weights, _ = runs
    out = tmp_path / "x.safetensors"
    assert main(["export", str(tmp / "lpft"), str(out), "--wise", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "export --wise" in err and "got 1.5" in err and "Traceback" not in err
    run = tmp_path / "moved"
    shutil.copytree(tmp / "lpft", run)
    moved = tmp_path / "elsewhere.safetensors"
    shutil.copy(weights, moved)
    record = json.loads((run / "start.json").read_text())
    (run / "start.json").write_text(json.dumps({**record, "file": str(tmp_path / "gone.safetensors")}))
    assert main(["export", str(run), str(out), "--wise", "0.5"]) == 2
    assert "gone.safetensors, which no longer exists" in capsys.readouterr().err
    (run / "start.json").write_text(json.dumps({**record, "file": str(moved)}))
    from thawkit.plugins.train.checkpoint import save_weights

    save_weights(moved, cnn(2).state_dict())  # other weights under the recorded name
    assert main(["export", str(run), str(out), "--wise", "0.5"]) == 2
    assert "SHA-256 differs" in capsys.readouterr().err
    (run / "start.json").write_text("{not json")
    assert main(["export", str(run), str(out), "--wise", "0.5"]) == 2
    assert "start.json is not a thawkit-start record" in capsys.readouterr().err
    (run / "start.json").unlink()
    assert main(["export", str(run), str(out), "--wise", "0.5"]) == 2
    assert "has no start.json" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_recipe_refuses_bad_alphas(runs, pm):
    import thawkit

    tmp, _, _ = runs
    d = recipe_dict(tmp / "data", tmp / "bad", train={"wise_alphas": [0.5, 2]})
    with pytest.raises(thawkit.ConfigError, match=r"train\.wise_alphas.*from 0 to 1.*2"):
        load(d, pm)


def test_sweep_on_cached_features_equals_the_uncached_sweep(runs, tmp_path, pm):
    """last-block with augment off trains on cached features of the frozen blocks; WiSE leaves
    those blocks bit-identical, so the sweep may evaluate through the cache: same numbers."""
    from thawkit.plugins.train import train

    tmp, weights, _ = runs
    found = []
    for cache in ("auto", "off"):
        d = recipe_dict(tmp / "data", tmp_path / cache, strategy={"name": "last-block"},
                        backbone={"weights": str(weights), "kwargs": {"width": 4, "num_classes": 5}},
                        data={"augment": False},
                        train={"epochs": 2, "cache": cache, "wise_alphas": [0.3, 0.7]})
        assert train(load(d, pm), log=quiet).status == "finished"
        plan = json.loads((tmp_path / cache / "plan.json").read_text())
        assert plan["cache"][0]["on"] == (cache == "auto")
        found.append(json.loads((tmp_path / cache / "run.json").read_text())["wise"])
    assert found[0] == found[1] and found[0][0]["val_loss"] != found[0][1]["val_loss"]
