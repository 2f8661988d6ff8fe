"""Stop, resume, Ctrl-C and crash safety: a resumed run ends bit-identical to an uninterrupted one."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from test_train import load, make_data, recipe_dict, write_recipe



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


def quiet(_line: str) -> None:
    pass


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "best.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs"
    assert metrics(a) == metrics(b)


def straight_and_resumed(tmp_path, data, pm, /, stop_after=None, on_step=None, **sections):
    """An uninterrupted run, and the same run stopped (by --stop-after or on_step) and resumed."""
    from thawkit.plugins.train import resume, train

    d = recipe_dict(data, tmp_path / "straight", **sections)
    assert train(load(d, pm), log=quiet).status == "finished"
    d = recipe_dict(data, tmp_path / "resumed", **sections)
    first = train(load(d, pm), log=quiet, stop_after=stop_after, on_step=on_step)
    assert first.status in ("stopped", "interrupted")
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    again = resume(tmp_path / "resumed", pm=pm, log=quiet)
    assert again.status == "finished"
    return tmp_path / "straight", tmp_path / "resumed", first


def test_head_only_stop_and_resume_is_bit_identical(tmp_path, data, pm):
    a, b, first = straight_and_resumed(tmp_path, data, pm, stop_after=1, train={"epochs": 3})
    assert first.epochs_done == 1 and "--resume" in first.message
    assert_same_run(a, b)


@pytest.mark.parametrize("stop_after", [1, 3])
def test_gradual_stopped_mid_phase_is_bit_identical(tmp_path, data, pm, stop_after):
    """Phases cover epochs 0-1 and 2-3: stopping after epoch 1 or 3 stops inside one (after 3,
    with a thawed block's optimizer state to carry). Dropout, random crops and flips, and
    weight decay on thawed blocks all have to continue exactly."""
    sections = {"strategy": {"name": "gradual", "every": 2}, "train": {"epochs": 4},
                "backbone": {"kwargs": {"width": 4, "dropout": 0.3}},
                "data": {"augment": True}, "schedule": {"name": "onecycle"}}
    a, b, _ = straight_and_resumed(tmp_path, data, pm, stop_after=stop_after, **sections)
    rows = metrics(b)
    assert [r["phase"] for r in rows] == [0, 0, 1, 1]
    assert_same_run(a, b)


def test_ctrl_c_mid_epoch_saves_and_resumes_bit_identical(tmp_path, data, pm):
    from thawkit.plugins.train.checkpoint import load_checkpoint

    def ctrl_c(trainer):
        if trainer.state.epoch == 1 and trainer.state.step == 2:
            signal.raise_signal(signal.SIGINT)

    sections = {"strategy": {"name": "last-block"}, "train": {"epochs": 2},
                "backbone": {"kwargs": {"width": 4, "dropout": 0.3}},
                "schedule": {"name": "plateau", "patience": 0}}
    handler = signal.getsignal(signal.SIGINT)
    a, b, first = straight_and_resumed(tmp_path, data, pm, on_step=ctrl_c, **sections)
    assert first.status == "interrupted" and "epoch 2, step 2" in first.message
    assert signal.getsignal(signal.SIGINT) is handler
    assert_same_run(a, b)
    assert load_checkpoint(b)["epoch"] == 2


def test_ctrl_c_exit_code_and_checkpoint(tmp_path, data, pm):
    from thawkit.plugins.train import train
    from thawkit.plugins.train.checkpoint import load_checkpoint
    from thawkit.plugins.train.commands import EXIT_INTERRUPTED

    def ctrl_c(trainer):
        if trainer.state.step == 1:
            signal.raise_signal(signal.SIGINT)

    d = recipe_dict(data, tmp_path / "run")
    outcome = train(load(d, pm), log=quiet, on_step=ctrl_c)
    assert outcome.status == "interrupted" and EXIT_INTERRUPTED == 130
    ckpt = load_checkpoint(tmp_path / "run")
    assert (ckpt["epoch"], ckpt["step"]) == (0, 1)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "interrupted"


def test_crash_during_checkpoint_write_keeps_the_previous_one(tmp_path, data, pm, monkeypatch):
    import torch
    from thawkit.plugins.train import train
    from thawkit.plugins.train.checkpoint import load_checkpoint, save_checkpoint

    d = recipe_dict(data, tmp_path / "run")
    assert train(load(d, pm), log=quiet, stop_after=1).status == "stopped"
    run = tmp_path / "run"
    before = (run / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half the bytes reached the disk ...
        raise OSError("simulated crash: disk unplugged")  # ... and then the process died

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(run, {"epoch": 99, "step": 0})
    monkeypatch.undo()
    assert (run / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(run)["epoch"] == 1
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_torn_checkpoint_is_a_clear_error(tmp_path, data, pm):
    from thawkit.plugins.cli import main
    from thawkit.plugins.train import train

    d = recipe_dict(data, tmp_path / "run")
    assert train(load(d, pm), log=quiet, stop_after=1).status == "stopped"
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2


def test_resume_errors(tmp_path, data, pm, capsys):
    from thawkit.plugins.cli import main
    from thawkit.plugins.train import train

    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    d = recipe_dict(data, tmp_path / "run")
    recipe = write_recipe(tmp_path / "r.yaml", d)
    assert train(load(d, pm), log=quiet, stop_after=1).status == "stopped"
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", "optimizer.lr=1"]) == 2
    assert "own recipe" in capsys.readouterr().err
    other = write_recipe(tmp_path / "o.yaml", recipe_dict(data, tmp_path / "run",
                                                          optimizer={"lr": 0.5}))
    assert main(["train", str(other), "--resume", str(tmp_path / "run")]) == 2
    assert "optimizer.lr" in capsys.readouterr().err
    # the recipe it started with is fine, and so is finishing the run via the CLI
    assert main(["train", str(recipe), "--resume", str(tmp_path / "run")]) == 0
    assert "finished 2 epochs" in capsys.readouterr().out
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert "already finished" in capsys.readouterr().out
