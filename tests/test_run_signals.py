"""Real signals: ``thawkit train`` in a subprocess killed with SIGKILL (at a random step before
the first checkpoint, in the middle of a checkpoint write) or stopped with a real SIGINT, then
``--resume``: the run ends bit-identical to the uninterrupted one. (A kill between the last
checkpoint and the final weights is simulated in-process, in test_run_guards.py; the runner
here can do it too: mode "final".) Three subprocesses, each mostly importing torch."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_train import load, make_data, recipe_dict, write_recipe

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

#: The subprocess: ``thawkit train`` with a trap that kills it (SIGKILL, no cleanup of any kind)
#: at the chosen point, or waits at a step for the test's SIGINT.
RUNNER = textwrap.dedent("""
    import os, signal, sys, time
    import torch
    from thawkit.plugins.train import loop

    mode, n, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    count = [0]
    loop.Trainer._plot = lambda self: None  # curves.png is not what is tested (saves importing matplotlib)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "write":  # half of the n-th checkpoint reaches the disk, then SIGKILL
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            count[0] += 1
            real_save(obj, f, *args, **kwargs)
            if count[0] == n:
                f.flush()
                f.truncate(f.tell() // 2)
                f.flush()
                die()
        torch.save = save
    elif mode == "final":  # the last checkpoint is written, model.safetensors is not
        real_weights = loop.save_weights

        def save_weights(path, state, metadata=None):
            if path.name == "model.safetensors":
                die()
            real_weights(path, state, metadata)
        loop.save_weights = save_weights
    else:  # "step": SIGKILL after the n-th optimizer step; "sigint": wait there for SIGINT
        real_init = loop.Trainer.__init__

        def init(self, *args, **kwargs):
            real_init(self, *args, **kwargs)

            def on_step(trainer):
                count[0] += 1
                if count[0] != n:
                    return
                if mode == "step":
                    die()
                open(marker, "w").close()
                deadline = time.monotonic() + 60
                while not trainer.interrupt_requested and time.monotonic() < deadline:
                    time.sleep(0.005)
            self.on_step = on_step
        loop.Trainer.__init__ = init

    from thawkit.cli import main
    sys.exit(main(sys.argv[4:]))
""")

EPOCHS, STEPS = 2, 5  # 18 training images in batches of 4: 5 steps per epoch, a checkpoint each


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data, the recipe, the runner script and the uninterrupted run to compare with."""
    import thawkit
    from thawkit.plugins.train import train

    tmp = tmp_path_factory.mktemp("signals")
    data = make_data(tmp)
    sections = {"strategy": {"name": "gradual", "every": 1}, "train": {"epochs": EPOCHS},
                "backbone": {"kwargs": {"width": 4, "dropout": 0.3}}, "data": {"augment": True}}
    pm = thawkit.get_plugin_manager(entrypoints=False)
    straight = tmp / "straight"
    assert train(load(recipe_dict(data, straight, **sections), pm), pm=pm,
                 log=lambda s: None).status == "finished"
    recipe = write_recipe(tmp / "r.yaml", recipe_dict(data, tmp / "unused", **sections))
    runner = tmp / "runner.py"
    runner.write_text(RUNNER)
    return recipe, runner, straight


def rows(run: Path) -> list[dict]:
    out = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in out:
        r.pop("seconds")
    return out


def start(setup, run: Path, mode: str, n: int) -> subprocess.Popen:
    recipe, runner, _ = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "THAWKIT_PLUGINS": ""}
    return subprocess.Popen([sys.executable, str(runner), mode, str(n), str(run) + ".marker",
                             "train", str(recipe), "--output", str(run)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def resume_and_compare(run: Path, straight: Path, pm) -> None:
    from thawkit.plugins.train import resume

    assert resume(run, pm=pm, log=lambda s: None).status == "finished"
    for name in ("model.safetensors", "best.safetensors"):
        assert (run / name).read_bytes() == (straight / name).read_bytes(), name
    assert rows(run) == rows(straight)
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


_rng = random.Random(10)
KILLS = [("step", _rng.randint(1, STEPS - 1)),          # before the first checkpoint
         ("write", _rng.randint(2, EPOCHS))]             # inside a later checkpoint write


@pytest.mark.parametrize(("mode", "n"), KILLS, ids=[m for m, _ in KILLS])
def test_sigkill_then_resume_ends_as_the_uninterrupted_run(tmp_path, setup, pm, mode, n):
    from thawkit.plugins.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    proc = start(setup, run, mode, n)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    if mode == "step":
        assert not (run / "checkpoint.pt").exists()
    elif mode == "write":
        assert load_checkpoint(run)["epoch"] == n - 1  # the torn write left the previous one
        assert list(run.glob(".checkpoint.pt.*.tmp"))
    else:
        assert load_checkpoint(run)["epoch"] == EPOCHS and not (run / "model.safetensors").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # SIGKILL: no say
    resume_and_compare(run, setup[2], pm)


def test_real_sigint_saves_exits_130_and_resumes(tmp_path, setup, pm):
    from thawkit.plugins.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    proc = start(setup, run, "sigint", STEPS + 2)  # epoch 2, step 2
    marker = Path(str(run) + ".marker")
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopping after this step" in err and "Traceback" not in err
    assert "interrupted at epoch 2, step 2" in out and f"--resume {run}" in out
    assert (load_checkpoint(run)["epoch"], load_checkpoint(run)["step"]) == (1, 2)
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    resume_and_compare(run, setup[2], pm)
