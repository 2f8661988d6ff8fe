"""A run directory is proportional to what trains: one complete model.safetensors; checkpoint.pt,
best.safetensors and start.safetensors hold only what training can change; the rest is the
start, rebuilt from the recipe and checked tensor by tensor against start.json."""
from __future__ import annotations

import json
import shutil

import pytest
from test_resume import assert_same_run, metrics, quiet
from test_train import load, make_data, recipe_dict


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


def _weights(path):
    from thawkit.plugins.weights import read_weights

    return read_weights(path)


def _checkpoint_model(run):
    from thawkit.plugins.train.checkpoint import load_checkpoint

    return load_checkpoint(run)["model"]


def _pretrained(path, seed: int):
    """A weights file for the small CNN (5 classes, width 4), as a user's pretrained file."""
    import torch
    from thawkit.plugins.train.checkpoint import save_weights
    from thawkit.plugins.train.demo_model import small_cnn

    torch.manual_seed(seed)
    save_weights(path, small_cnn(num_classes=5, width=4).state_dict())
    return path


# ----------------------------------------------------------- what changes
@pytest.mark.parametrize("strategy", [
    {"name": "head-only"}, {"name": "head-only", "norm": "affine"},
    {"name": "head-only", "norm": "train"}, {"name": "last-block"},
    {"name": "gradual", "every": 1}, {"name": "bitfit"}])
def test_tensors_outside_changing_keys_never_change(pm, strategy):
    """Train every phase a few steps in train mode, with weight decay and momentum: every
    tensor changing_keys leaves out is bit-identical to the start, and each phase's set holds
    the earlier ones (so a checkpoint grows as blocks thaw)."""
    import thawkit
    import torch
    from thawkit.plugins.train.demo_model import small_cnn
    from thawkit.plugins.train.start import changing_keys

    torch.manual_seed(0)
    params = {k: v for k, v in strategy.items() if k != "name"}
    adapted = thawkit.adapt(small_cnn(num_classes=5, width=4), strategy["name"], num_classes=3,
                            pm=pm, **params)
    start = {k: v.clone() for k, v in adapted.model.state_dict().items()}
    opt = adapted.optimizer("sgd", lr=0.1, momentum=0.9, weight_decay=0.1)
    sets = []
    for phase in adapted.phases:
        adapted.on_epoch_start(phase.epoch)
        adapted.model.train()
        for _ in range(3):
            loss = adapted.model(torch.randn(4, 3, 16, 16)).logsumexp(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        keys = changing_keys(adapted, adapted.phase)
        now = adapted.model.state_dict()
        moved = {k for k in now if not torch.equal(now[k], start[k])}
        assert moved <= keys, sorted(moved - keys)
        assert {n for n, p in adapted.model.named_parameters() if p.requires_grad} <= keys
        sets.append(keys)
    assert all(a <= b for a, b in zip(sets, sets[1:]))
    if strategy.get("norm") == "train":
        assert "stem.1.running_mean" in sets[0] and "stem.0.weight" not in sets[0]
    elif strategy["name"] == "head-only":
        assert not any(k.endswith("running_mean") for k in sets[0])
        assert ("stem.1.weight" in sets[0]) == (strategy.get("norm") == "affine")


# ------------------------------------------------------------- run files
def test_head_only_run_holds_one_copy_of_the_backbone(tmp_path, data, pm):
    """weights=None, head-only: every tensor outside the head is stored once, in
    model.safetensors; checkpoint.pt and best.safetensors hold the head (and the optimizer)."""
    from thawkit.plugins.train import train

    run = tmp_path / "run"
    d = recipe_dict(data, run, backbone={"kwargs": {"width": 16}}, train={"epochs": 3})
    assert train(load(d, pm), log=quiet).status == "finished"
    final = _weights(run / "model.safetensors")
    copies = {k: 0 for k in final}
    for state in (final, _weights(run / "best.safetensors"), _checkpoint_model(run)):
        for k in state:
            copies[k] += 1
    assert not (run / "start.safetensors").exists()
    assert {k for k, n in copies.items() if n > 1} == {"fc.weight", "fc.bias"}
    size = {p.name: p.stat().st_size for p in run.iterdir()}
    assert size["checkpoint.pt"] < size["model.safetensors"] / 10
    assert size["best.safetensors"] < size["model.safetensors"] / 100
    assert sum(size.values()) < 1.5 * size["model.safetensors"]
    record = json.loads((run / "start.json").read_text())
    assert record["format"] == "thawkit-start/2" and record["saved"] is None
    assert set(record["tensors"]) == set(final) - {"fc.weight", "fc.bias"}


def test_gradual_checkpoint_grows_with_what_thaws_and_resumes_exactly(tmp_path, data, pm):
    """Stopped after each epoch and resumed: the checkpoint holds the head, then block3 too,
    then block2; the run ends bit-identical to the uninterrupted one."""
    from thawkit.plugins.train import resume, train

    sections = {"strategy": {"name": "gradual", "every": 1}, "train": {"epochs": 3},
                "data": {"augment": True}}
    assert train(load(recipe_dict(data, tmp_path / "a", **sections), pm),
                 log=quiet).status == "finished"
    b = tmp_path / "b"
    assert train(load(recipe_dict(data, b, **sections), pm), log=quiet,
                 stop_after=1).status == "stopped"
    blocks = []
    for n in (2, 3):
        blocks.append({k.split(".")[0] for k in _checkpoint_model(b)})
        assert resume(b, pm=pm, log=quiet, stop_after=n).status == ("stopped" if n < 3 else "finished")
    blocks.append({k.split(".")[0] for k in _checkpoint_model(b)})
    assert blocks == [{"fc"}, {"fc", "block3"}, {"fc", "block3", "block2"}]
    assert_same_run(tmp_path / "a", b)


def test_best_is_completed_by_the_final_weights_or_the_rebuilt_start(tmp_path, data, pm):
    """load_run_model(best=True) gives the same model whether model.safetensors completes the
    best weights (a finished run, even with its weights file gone) or the start is rebuilt
    (a run without final weights yet)."""
    import torch
    from thawkit.plugins.train import train
    from thawkit.plugins.train.inference import load_run_model

    weights = _pretrained(tmp_path / "pretrained.safetensors", 0)
    run = tmp_path / "run"
    d = recipe_dict(data, run, strategy={"name": "last-block"}, train={"epochs": 3},
                    backbone={"weights": str(weights), "kwargs": {"width": 4, "num_classes": 5}})
    assert train(load(d, pm), log=quiet).status == "finished"
    best = _weights(run / "best.safetensors")
    assert best and all(k.startswith(("fc.", "block3.")) for k in best)
    by_final = load_run_model(run, best=True, pm=pm).model.state_dict()
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "model.safetensors").unlink()
    by_start = load_run_model(unfinished, best=True, pm=pm).model.state_dict()
    start = _weights(weights)
    assert by_final.keys() == by_start.keys()
    assert all(torch.equal(by_final[k], by_start[k]) for k in by_final)
    assert all(torch.equal(by_final[k], best[k]) for k in best)
    assert torch.equal(by_final["stem.0.weight"], start["stem.0.weight"])
    weights.unlink()  # the final weights still complete best: nothing needs rebuilding
    again = load_run_model(run, best=True, pm=pm).model.state_dict()
    assert all(torch.equal(again[k], v) for k, v in by_final.items())


def test_changed_weights_file_is_a_clear_error_on_resume_and_predict(tmp_path, data, pm, capsys):
    """Files that hold only what changed need the exact start: a weights file replaced after
    the run started stops --resume and predict --best with one message, checkpoint kept."""
    from thawkit.plugins.cli import main
    from thawkit.plugins.train import train

    weights = _pretrained(tmp_path / "pretrained.safetensors", 0)
    run = tmp_path / "run"
    d = recipe_dict(data, run, train={"epochs": 3},
                    backbone={"weights": str(weights), "kwargs": {"width": 4, "num_classes": 5}})
    assert train(load(d, pm), log=quiet, stop_after=1).status == "stopped"
    kept = (run / "checkpoint.pt").read_bytes()
    _pretrained(weights, 1)  # other weights under the same name
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error") == 1, err
    for part in (str(weights.resolve()), "SHA-256 differs", "start.json",
                 "cannot be rebuilt exactly", "put back the weights"):
        assert part in err, (part, err)
    assert (run / "checkpoint.pt").read_bytes() == kept
    image = next((data / "val" / "cat").glob("*.png"))
    assert main(["predict", str(run), str(image), "--best"]) == 2
    err = capsys.readouterr().err
    assert "best.safetensors: the starting weights from" in err and "SHA-256 differs" in err
    (run / "start.json").rename(tmp_path / "start.json")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "has no start.json" in err and "Traceback" not in err
    (tmp_path / "start.json").rename(run / "start.json")
    _pretrained(weights, 0)  # the original back: the run goes on
    assert main(["train", "--resume", str(run)]) == 0


def test_random_init_start_is_rebuilt_from_the_seed(tmp_path, data, pm):
    """weights=None: the start is the builder's initialisation drawn from train.seed; a
    digest that no longer matches (another library version drawing other numbers) is an
    error, not a silently different model."""
    import thawkit
    from thawkit.plugins.train import train
    from thawkit.plugins.train.inference import load_run_model

    run = tmp_path / "run"
    assert train(load(recipe_dict(data, run, train={"epochs": 2}), pm),
                 log=quiet, stop_after=1).status == "stopped"
    assert load_run_model(run, best=True, pm=pm).model is not None
    record = json.loads((run / "start.json").read_text())
    record["tensors"]["stem.0.weight"] = "0" * 64
    (run / "start.json").write_text(json.dumps(record))
    with pytest.raises(thawkit.WeightsError, match=r"initialised from train\.seed.*"
                       r"stem\.0\.weight.*initialisation changed"):
        load_run_model(run, best=True, pm=pm)


# ------------------------------------------------------ older directories
def _as_written_before(run, pm):
    """Rewrite a stopped run's files as thawkit wrote them before: full checkpoint and best
    weights, a thawkit-start/1 record with the whole start in start.safetensors."""
    from thawkit.plugins.train.checkpoint import load_checkpoint, save_checkpoint, save_weights
    from thawkit.plugins.train.start import read_start, rebuild_start
    from thawkit.plugins.interpolation import head_keys, state_digest

    record = read_start(run)
    adapted = rebuild_start(run, record, pm=pm)
    start = adapted.model.state_dict()
    ckpt = load_checkpoint(run)
    ckpt["model"] = {**start, **ckpt.pop("model")}
    del ckpt["model_changed_only"], ckpt["format"]
    save_checkpoint(run, ckpt)
    save_weights(run / "best.safetensors", {**start, **_weights(run / "best.safetensors")})
    keys = sorted(set(start) - head_keys(start, adapted.layout))
    save_weights(run / "start.safetensors", {k: start[k] for k in keys})
    (run / "start.json").write_text(json.dumps({
        "format": "thawkit-start/1", "spec": record["spec"], "weights": None, "pretrained": False,
        "file": None, "saved": "start.safetensors", "tensors": len(keys),
        "sha256": state_digest(start, keys)}))


def test_run_directories_written_before_stay_readable(tmp_path, data, pm):
    """A run directory with full files (thawkit-start/1) resumes bit-identical, keeps writing
    full checkpoints, and predict --best and WiSE-FT read it."""
    import torch
    from thawkit.plugins.train.inference import load_run_model
    from thawkit.plugins.train.wise import wise_model

    from thawkit.plugins.train import resume, train

    sections = {"strategy": {"name": "last-block"}, "train": {"epochs": 3}}
    a = tmp_path / "straight"
    assert train(load(recipe_dict(data, a, **sections), pm), log=quiet).status == "finished"
    old = tmp_path / "old"
    d = recipe_dict(data, old, **sections)
    assert train(load(d, pm), log=quiet, stop_after=1).status == "stopped"
    _as_written_before(old, pm)
    assert resume(old, pm=pm, log=quiet).status == "finished"
    assert (old / "model.safetensors").read_bytes() == (a / "model.safetensors").read_bytes()
    assert metrics(old) == metrics(a)
    final = _weights(old / "model.safetensors")
    assert set(_checkpoint_model(old)) == set(final)  # still full files
    best = load_run_model(old, best=True, pm=pm).model.state_dict()
    assert all(torch.equal(best[k], v) for k, v in _weights(a / "best.safetensors").items())
    start = _weights(old / "start.safetensors")
    zero = wise_model(old, 0.0, pm=pm).model.state_dict()
    assert all(torch.equal(zero[k], v) for k, v in start.items())


def test_names_moved_to_start_keep_working_with_a_warning():
    from thawkit.plugins.train import start, wise

    for name in ("record_start", "START_FORMAT"):
        with pytest.warns(DeprecationWarning, match=f"moved to thawkit.plugins.train.start.{name}"):
            assert getattr(wise, name) is getattr(start, name)
    with pytest.raises(AttributeError):
        wise.no_such_name  # noqa: B018
