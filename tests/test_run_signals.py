"""Real signals: ``thawkit train`` killed with SIGKILL (at a random step before the first
checkpoint, in the middle of a checkpoint write) or stopped with a real SIGINT, then
``--resume``: the run ends bit-identical to the uninterrupted one. (A kill between the last
checkpoint and the final weights is simulated in-process, in test_run_guards.py; the runner
here can do it too: mode "final".)

Each run is a child process forked from one helper process that imported torch once (an
import costs seconds here), so the kills stay cheap: the child is a whole ``thawkit train``
process, and the signals are real ones, sent to its pid."""
from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_train import load, make_data, recipe_dict, write_recipe

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork and signals")

#: The helper: for each line ``[mode, n, prefix, argv]`` on stdin, fork a child that runs
#: ``thawkit ARGV`` (stdout, stderr to PREFIX.out, PREFIX.err) with a trap that kills it
#: (SIGKILL, no cleanup of any kind) at the chosen point, or waits at a step for a SIGINT;
#: print the child's pid, then its exit code (negative: the signal that ended it).
RUNNER = textwrap.dedent("""
    import json, os, signal, sys, time
    import torch, torchvision  # noqa: F401 - imported once, before the forks
    from thawkit.plugins.cli import main
    from thawkit.plugins.train import cache, data, inference, loop, runs, session  # noqa: F401

    torch.set_num_threads(1)


    def trap(mode, n, marker):
        count = [0]
        loop.Trainer._plot = lambda self: None  # curves.png is not what is tested

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


    for line in iter(sys.stdin.readline, ""):
        mode, n, prefix, argv = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 99
            try:
                for fd, suffix in ((1, ".out"), (2, ".err")):
                    os.dup2(os.open(prefix + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
                trap(mode, n, prefix + ".marker")
                code = main(argv)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(pid, flush=True)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
""")

EPOCHS, STEPS = 2, 5  # 18 training images in batches of 4: 5 steps per epoch, a checkpoint each


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data, the recipe, the runner script and the uninterrupted run to compare with."""
    import thawkit
    from thawkit.plugins.train import train

    tmp = tmp_path_factory.mktemp("signals")
    runner = tmp / "runner.py"
    runner.write_text(RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "THAWKIT_PLUGINS": ""}
    # started first: its imports overlap with the uninterrupted run below
    helper = subprocess.Popen([sys.executable, str(runner)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, bufsize=0)
    try:
        data = make_data(tmp)
        sections = {"strategy": {"name": "gradual", "every": 1}, "train": {"epochs": EPOCHS},
                    "backbone": {"kwargs": {"width": 4, "dropout": 0.3}},
                    "data": {"augment": True}}
        pm = thawkit.get_plugin_manager(entrypoints=False)
        straight = tmp / "straight"
        assert train(load(recipe_dict(data, straight, **sections), pm),
                     log=lambda s: None).status == "finished"
        recipe = write_recipe(tmp / "r.yaml", recipe_dict(data, tmp / "unused", **sections))
        yield recipe, helper, straight
    finally:
        helper.kill()  # idle between runs: nothing to lose
        helper.wait(timeout=60)


def rows(run: Path) -> list[dict]:
    out = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in out:
        r.pop("seconds")
    return out


def start(setup, run: Path, mode: str, n: int) -> int:
    """Fork a ``thawkit train`` child with the trap ``mode``; its pid."""
    recipe, helper, _ = setup
    argv = ["train", str(recipe), "--output", str(run)]
    helper.stdin.write((json.dumps([mode, n, str(run), argv]) + "\n").encode())
    return int(reply(helper))


def reply(helper: subprocess.Popen) -> str:
    """The helper's next line (read unbuffered, byte by byte, so select sees all that is left)."""
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([helper.stdout], [], [], 120)
        byte = helper.stdout.read(1) if ready else b""
        if not byte:
            helper.kill()
            pytest.fail(f"the helper that forks thawkit train stopped answering (got {line!r})")
        line += byte
    return line.decode()


def finish(setup, run: Path) -> tuple[int, str, str]:
    """The child's exit code, stdout and stderr."""
    code = int(reply(setup[1]))
    return code, Path(f"{run}.out").read_text(), Path(f"{run}.err").read_text()


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
    start(setup, run, mode, n)
    code, _, err = finish(setup, run)
    assert code == -signal.SIGKILL, err
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
    pid = start(setup, run, "sigint", STEPS + 2)  # epoch 2, step 2
    marker = Path(f"{run}.marker")
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(pid, signal.SIGINT)
    code, out, err = finish(setup, run)
    assert code == 130, err
    assert "stopping after this step" in err and "Traceback" not in err
    assert "interrupted at epoch 2, step 2" in out and f"--resume {run}" in out
    assert (load_checkpoint(run)["epoch"], load_checkpoint(run)["step"]) == (1, 2)
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    resume_and_compare(run, setup[2], pm)
