"""The run directory under stress (issue 10, run side): unwritable outputs, full and read-only
disks mid-run, NaN validation, a second process, resume dead ends, tampered run directories,
export over a run's own files, and code named by a run's recipe."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_train import load, make_data, recipe_dict, write_recipe

from thawkit.plugins.cli import main


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    """A finished two-epoch run, copied by the tests that tamper with it."""
    import thawkit
    from thawkit.plugins.train import train

    run = tmp_path_factory.mktemp("finished") / "run"
    pm = thawkit.get_plugin_manager(entrypoints=False)
    assert train(load(recipe_dict(data, run), pm), pm=pm, log=quiet).status == "finished"
    return run


def one_error(capsys, *words) -> str:
    """The command's stderr: one line, no traceback, naming every one of ``words``."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert str(w) in err, (w, err)
    return err


def status(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def failing(errno_: int, under: Path):
    """An ``OSError(errno_)`` for every path under ``under``."""
    def check(path, *_args, **_kwargs):
        if str(path).startswith(str(under)):
            raise OSError(errno_, os.strerror(errno_), str(path))
    return check


# ------------------------------------------------------- unwritable outputs
def test_output_under_a_file_or_a_dangling_symlink(tmp_path, data, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(data, tmp_path / "unused"))
    (tmp_path / "file").write_text("x")
    assert main(["train", str(recipe), "--output", str(tmp_path / "file" / "run")]) == 2
    one_error(capsys, tmp_path / "file", "not a directory")
    assert main(["train", str(recipe), "--output", str(tmp_path / "file")]) == 2
    one_error(capsys, tmp_path / "file", "not a directory")
    assert main(["probe", str(recipe), "--lr", "0.1", "--output", str(tmp_path / "file" / "p"),
                 "--set", "data.augment=false"]) == 2
    one_error(capsys, tmp_path / "file", "not a directory")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert main(["train", str(recipe), "--output", str(tmp_path / "link")]) == 2
    one_error(capsys, tmp_path / "link", "symlink to nothing")
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "unused").exists()


def test_read_only_output_new_or_existing(tmp_path, data, capsys, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(data, tmp_path / "unused"))
    ro = tmp_path / "ro"
    monkeypatch.setattr(os, "mkdir", failing(errno.EROFS, ro))
    assert main(["train", str(recipe), "--output", str(ro / "run")]) == 2
    one_error(capsys, ro / "run", "read-only")
    monkeypatch.undo()
    existing = tmp_path / "existing"
    existing.mkdir()
    real_open = os.open

    def ro_open(path, flags, *args):
        failing(errno.EROFS, existing)(path)
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, "open", ro_open)
    assert main(["train", str(recipe), "--output", str(existing)]) == 2
    one_error(capsys, existing, "read-only")
    monkeypatch.undo()
    assert list(existing.iterdir()) == []


def test_disk_full_mid_run_fails_cleanly_keeps_the_checkpoint_and_resumes(tmp_path, data, pm,
                                                                          finished, monkeypatch):
    """The checkpoint of epoch 2 meets a full disk: a clean error, run.json "failed", epoch 1's
    checkpoint intact, no temporary file left; --resume then ends as one uninterrupted run."""
    import torch
    from thawkit.plugins.train import resume, train
    from thawkit.plugins.train.checkpoint import load_checkpoint
    from thawkit.plugins.train.rundir import RunDirError

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if obj.get("epoch") == 2:
            f.write(b"x" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(RunDirError) as info:
        train(load(recipe_dict(data, run), pm), pm=pm, log=quiet)
    monkeypatch.undo()
    msg = str(info.value)
    assert msg.startswith(f"cannot write {str(run / 'checkpoint.pt')!r}: the disk is full; ")
    assert f"keeps its last good checkpoint ({run / 'checkpoint.pt'}, after epoch 1)" in msg
    assert f"thawkit train --resume {run}" in msg
    assert status(run)["status"] == "failed" and "disk is full" in status(run)["message"]
    assert load_checkpoint(run)["epoch"] == 1
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []
    assert resume(run, pm=pm, log=quiet).status == "finished" and status(run)["status"] == "finished"
    # the same recipe, never interrupted
    assert (run / "model.safetensors").read_bytes() == (finished / "model.safetensors").read_bytes()


def test_read_only_mid_run_is_one_clean_error(tmp_path, data, capsys, monkeypatch):
    """Every write fails from epoch 2 on (the file system turned read-only): exit 2 naming the
    file and the cause; the checkpoint of epoch 1 stays loadable."""
    import tempfile

    from thawkit.plugins.train import checkpoint
    from thawkit.plugins.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(data, run))
    real_mkstemp, real_append = tempfile.mkstemp, checkpoint.append_jsonl
    calls = {"n": 0}

    def ro_after_first_epoch(*args, **kwargs):
        if (run / "checkpoint.pt").exists():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, **kwargs)

    def ro_append(path, record):
        calls["n"] += 1
        if (run / "checkpoint.pt").exists():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        real_append(path, record)

    monkeypatch.setattr(tempfile, "mkstemp", ro_after_first_epoch)
    monkeypatch.setattr("thawkit.plugins.train.loggers.append_jsonl", ro_append)
    assert main(["train", str(recipe)]) == 2
    monkeypatch.undo()
    one_error(capsys, run / "metrics.jsonl", "read-only")
    assert calls["n"] == 2 and load_checkpoint(run)["epoch"] == 1


# ------------------------------------------------------------------ NaN
def test_huge_lr_stops_with_a_clear_error_and_never_saves_non_finite_weights(tmp_path, data, capsys):
    import torch
    from safetensors.torch import load_file
    from thawkit.plugins.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    d = recipe_dict(data, run, strategy={"name": "full"}, optimizer={"name": "sgd", "lr": 1e6},
                    schedule={"name": "constant", "warmup_epochs": 0}, train={"epochs": 3})
    assert main(["train", str(write_recipe(tmp_path / "r.yaml", d))]) == 2
    err = one_error(capsys, "NaN or infinite", "had not written a checkpoint yet", "lower optimizer.lr")
    assert "running_var" in err  # the norm statistics blew up first
    assert status(run)["status"] == "failed" and "NaN or infinite" in status(run)["message"]
    assert not (run / "model.safetensors").exists()
    for name in ("best.safetensors",):
        if (run / name).exists():
            assert all(bool(torch.isfinite(v).all()) for v in load_file(run / name).values())
    if (run / "checkpoint.pt").exists():
        ckpt = load_checkpoint(run)
        assert all(bool(torch.isfinite(v).all()) for v in ckpt["model"].values()
                   if v.is_floating_point())


def test_nan_validation_loss_stops_before_saving_the_epoch(tmp_path, data, pm):
    """Norm statistics turned NaN: training (batch statistics) goes on, evaluation gives NaN.
    The run stops; nothing of that epoch is saved; best.safetensors stays epoch 1's."""
    import torch
    from thawkit.plugins.train import DivergedError, train
    from thawkit.plugins.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    d = recipe_dict(data, run, strategy={"name": "full"})

    def poison_norm(trainer):
        if trainer.state.epoch == 1 and trainer.state.step == 3:
            for m in trainer.s.model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_var.fill_(float("nan"))

    best = {}

    def keep_best(trainer):
        if trainer.state.epoch == 1 and trainer.state.step == 1:
            best["bytes"] = (run / "best.safetensors").read_bytes()
        poison_norm(trainer)
    with pytest.raises(DivergedError) as info:
        train(load(d, pm), pm=pm, log=quiet, on_step=keep_best)
    msg = str(info.value)
    assert "validation loss is nan after epoch 2" in msg and "nothing of this epoch" in msg
    assert load_checkpoint(run)["epoch"] == 1
    assert (run / "best.safetensors").read_bytes() == best["bytes"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert status(run)["status"] == "failed"


def test_predict_refuses_non_finite_weights(tmp_path, finished, data, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    state = load_file(run / "best.safetensors")
    state = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, run / "best.safetensors")
    image = str(data / "val" / "cat" / "0.png")
    assert main(["predict", str(run), image, "--best"]) == 2
    one_error(capsys, run / "best.safetensors", "NaN")
    assert main(["predict", str(run), image]) == 0 and "%" in capsys.readouterr().out
    assert torch.isfinite(load_file(run / "model.safetensors")["fc.weight"]).all()


# ----------------------------------------------------------------- lock
HOLD_LOCK = textwrap.dedent("""
    import sys
    from pathlib import Path
    from thawkit.plugins.train.rundir import run_lock
    with run_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        sys.stdin.read()
""")


def test_a_second_process_cannot_train_into_a_locked_run_directory(tmp_path, finished, data,
                                                                   capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "model.safetensors").unlink()  # unfinished: --resume has work to do
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir() if p.name != "run.lock")
        assert main(["train", "--resume", str(run)]) == 2
        one_error(capsys, run, f"pid {holder.pid}", "in use")
        recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(data, run))
        assert main(["train", str(recipe)]) == 2
        one_error(capsys, f"pid {holder.pid}")
        assert sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir()
                      if p.name != "run.lock") == before
    finally:
        holder.kill()  # SIGKILL: no cleanup, yet the OS releases the lock with the process
        holder.wait()
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "model.safetensors").read_bytes() == (finished / "model.safetensors").read_bytes()


# ----------------------------------------------------------- dead ends
def test_resume_without_a_checkpoint_starts_the_run_again(tmp_path, finished, data, pm, capsys):
    """A run that stopped before its first checkpoint (a corrupt image, an early SIGKILL) left
    recipe.yaml and friends but no checkpoint.pt: --resume starts it again from epoch 1."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for name in ("checkpoint.pt", "model.safetensors", "best.safetensors"):
        (run / name).unlink()
    (run / "metrics.jsonl").write_text('{"epoch": 0, "torn')
    (run / "run.json").write_text(json.dumps({"status": "running"}))
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "no checkpoint yet: starting its run again" in out and "finished 2 epochs" in out
    assert (run / "model.safetensors").read_bytes() == (finished / "model.safetensors").read_bytes()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # nothing at all in the directory: the message says how to start it
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--resume", str(empty)]) == 2
    one_error(capsys, "thawkit train RECIPE --output")


def test_killed_after_the_last_checkpoint_resume_writes_the_final_files(tmp_path, finished, capsys):
    """SIGKILL between the last checkpoint and model.safetensors leaves run.json "running" and a
    temporary file: --resume writes the weights (as the run would have) and cleans up."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "model.safetensors").unlink()
    (run / ".model.safetensors.k1ll3d.tmp").write_bytes(b"half")
    (run / "run.json").write_text(json.dumps({**status(run), "status": "running"}))
    assert main(["train", "--resume", str(run)]) == 0
    assert "finished 2 epochs" in capsys.readouterr().out
    assert (run / "model.safetensors").read_bytes() == (finished / "model.safetensors").read_bytes()
    assert status(run)["status"] == "finished"
    assert not list(run.glob(".*.tmp"))
    assert main(["train", "--resume", str(run)]) == 0
    assert "already finished" in capsys.readouterr().out


# ------------------------------------------------- tampered run directories
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


TAMPER = {
    "truncated data.json": ("data.json", _truncate),
    "wrong-typed data.json": ("data.json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "classes": "cat"}))),
    "wrong-typed preprocess": ("data.json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "preprocess": {"image_size": "big"}}))),
    "binary recipe.yaml": ("recipe.yaml", lambda p: p.write_bytes(b"\xff\xfe\x00\x81" * 50)),
    "recipe.yaml not a mapping": ("recipe.yaml", lambda p: p.write_text("- a list\n")),
    "truncated model.safetensors": ("model.safetensors", _truncate),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_predict_and_export_on_a_tampered_run_name_the_file(tmp_path, finished, data, capsys,
                                                           case):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    name, tamper = TAMPER[case]
    tamper(run / name)
    assert main(["predict", str(run), str(data / "val" / "cat" / "0.png")]) == 2
    one_error(capsys, run / name)
    assert main(["export", str(run), str(tmp_path / "out.safetensors")]) == 2
    one_error(capsys, run / name)
    assert not (tmp_path / "out.safetensors").exists()


def test_truncated_run_json_of_an_unfinished_run(tmp_path, finished, data, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "model.safetensors").unlink()
    _truncate(run / "run.json")
    assert main(["predict", str(run), str(data / "val" / "cat" / "0.png")]) == 2
    one_error(capsys, "has no model.safetensors", "run status: unknown", "--resume")
    assert main(["predict", str(run), str(data / "val" / "cat" / "0.png"), "--best"]) == 0


def test_export_never_overwrites_a_run_file_and_names_a_bad_path(tmp_path, finished, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for out in (run / "model.safetensors", run, run / "run.safetensors", finished / "best.safetensors"):
        assert main(["export", str(run), str(out), "--force"]) == 2
        one_error(capsys, "is a file of the run directory")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    (tmp_path / "file").write_text("x")
    assert main(["export", str(run), str(tmp_path / "file" / "m.safetensors")]) == 2
    one_error(capsys, tmp_path / "file", "not a directory")


# ---------------------------------------------------------------- trust
EVIL_PLUGIN = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n"


def test_predict_refuses_code_named_by_a_shared_run_unless_trusted(tmp_path, finished, data,
                                                                  capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    marker = tmp_path / "marker"
    (run / "evil.py").write_text(EVIL_PLUGIN.format(marker=str(marker)))
    recipe = yaml_load(run / "recipe.yaml")
    (run / "recipe.yaml").write_text(yaml_dump({**recipe, "plugins": ["evil.py"]}))
    image = str(data / "val" / "cat" / "0.png")
    assert main(["predict", str(run), image]) == 2
    one_error(capsys, "plugin 'evil.py'", "--trust-run")
    assert main(["export", str(run), str(tmp_path / "o.safetensors")]) == 2
    one_error(capsys, "plugin 'evil.py'", "--trust-run")
    assert not marker.exists()
    assert main(["-p", str(run / "evil.py"), "predict", str(run), image]) == 0  # named by the user
    assert marker.read_text() == "ran"
    marker.unlink()
    assert main(["predict", str(run), image, "--trust-run"]) == 0
    assert marker.exists()
    # a python: factory other than thawkit's own demo model
    recipe["backbone"] = {**recipe["backbone"], "name": "subprocess:run"}
    (run / "recipe.yaml").write_text(yaml_dump(recipe))
    assert main(["predict", str(run), image]) == 2
    one_error(capsys, "'python:subprocess:run'", "--trust-run")


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def yaml_dump(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


# ----------------------------------------------------------------- data
def test_skipped_files_one_class_and_val_equal_to_train_are_reported(tmp_path):
    from test_train import write_folder
    from thawkit.plugins.train.data import data_warnings, scan_folder

    root = write_folder(tmp_path / "d", classes=("a", "b"), per_class=2)
    (root / "a" / "notes.txt").write_text("x")
    (root / "b" / "photo.heic").write_bytes(b"x")
    (root / "b" / "gone.png").symlink_to(tmp_path / "missing.png")
    (root / "a" / ".DS_Store").write_bytes(b"x")
    train = scan_folder(str(root), "data.train")
    assert len(train.samples) == 4 and len(train.skipped) == 3
    notes = data_warnings(train, train)
    assert "3 files" in notes[0] and "notes.txt" in notes[0] and "gone.png" in notes[0]
    assert "same directory as data.train" in notes[-1]
    one = write_folder(tmp_path / "one", classes=("only",), per_class=2)
    single = scan_folder(str(one), "data.train")
    assert any("single class" in n for n in data_warnings(single, scan_folder(str(root), "v")))
    assert not any("same directory" in n for n in data_warnings(train, single))


def test_resume_with_a_checkpoint_that_does_not_fit_is_one_error(tmp_path, finished, capsys):
    import torch
    from thawkit.plugins.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "model.safetensors").unlink()
    ckpt = load_checkpoint(run)
    ckpt["model"]["fc.weight"] = torch.zeros(7, 1)
    torch.save(ckpt, run / "checkpoint.pt")
    assert main(["train", "--resume", str(run)]) == 2
    one_error(capsys, run / "checkpoint.pt", "does not fit")


def test_only_rank_0_of_a_distributed_job_takes_the_lock(tmp_path, monkeypatch):
    from thawkit.plugins.train.rundir import RunDirError, run_lock

    with run_lock(tmp_path), pytest.raises(RunDirError, match="in use"), run_lock(tmp_path):
        pass  # a second lock on the directory, even from this process, is refused
    monkeypatch.setenv("RANK", "1")
    with run_lock(tmp_path), run_lock(tmp_path):
        pass


def masked_cnn(width: int = 4):
    """The demo CNN with a buffer that holds -inf by design (as an attention mask may)."""
    import torch
    from thawkit.plugins.train.demo_model import small_cnn

    model = small_cnn(width=width)
    model.register_buffer("mask", torch.full((3,), float("-inf")))
    return model


def test_a_buffer_that_is_infinite_by_design_is_no_divergence(tmp_path, data, pm):
    from safetensors.torch import load_file
    from thawkit.plugins.train import predict, train

    d = recipe_dict(data, tmp_path / "run", backbone={"name": "test_run_guards:masked_cnn"},
                    train={"epochs": 1}, schedule={"warmup_epochs": 0})
    assert train(load(d, pm), pm=pm, log=quiet).status == "finished"
    assert load_file(tmp_path / "run" / "model.safetensors")["mask"].isinf().all()
    image = str(data / "val" / "eel" / "0.png")
    assert len(predict(tmp_path / "run", [image], pm=pm, trust=True)[0][1]) == 3


def test_an_abort_mid_epoch_marks_the_run_interrupted(tmp_path, data, pm):
    """A second Ctrl-C (KeyboardInterrupt at once) still leaves run.json saying so, and which
    checkpoint is kept; --resume continues from it."""
    from thawkit.plugins.train import resume, train

    def abort(trainer):
        if trainer.state.epoch == 1 and trainer.state.step == 2:
            raise KeyboardInterrupt
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(load(recipe_dict(data, run), pm), pm=pm, log=quiet, on_step=abort)
    assert status(run)["status"] == "interrupted"
    assert f"keeps its last good checkpoint ({run / 'checkpoint.pt'}, after epoch 1)" in \
        status(run)["message"]
    assert resume(run, pm=pm, log=quiet).status == "finished"
