"""``thawkit train`` under torchrun: two CPU processes (gloo) on a tiny ImageFolder.

Checked: both processes end with identical parameters, the thawed blocks moved and the frozen
stem did not, rank 0 alone writes the run directory (rank 1's writes are watched), validation
counts every image once, the result equals a one-process run with the same global batch within
float tolerance, resume with the same number of processes is bit-identical (also after a
Ctrl-C that only one process saw: all stop after the same step) while another number says what
that means, and the embedding guide's torchrun example runs.

Why not bit-identical to one process: the global batch and its gradient are the same, but the
one-process run sums the per-sample losses of the whole batch in one reduction, while under DDP
each process averages its share and the all-reduce adds the shares: float addition in another
order. The difference is rounding (~1e-7 relative per step), grown a little by 3 epochs of SGD
with momentum: parameters agree to 1e-5 absolute.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_train import load, make_data, recipe_dict, write_recipe
from torch import nn

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")

TESTS = Path(__file__).resolve().parent
ATOL = 1e-5


def gn_net(num_classes: int = 10) -> nn.Module:
    """A small CNN with GroupNorm (BatchNorm would normalise each process's part of the batch:
    that differs from one process by design unless train.sync_bn, which needs CUDA)."""
    def conv(cin, cout, stride=1):
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(2, cout), nn.ReLU()]

    return nn.Sequential(*[
        nn.Sequential(*conv(3, 4)),                    # 0: stem
        nn.Sequential(*conv(4, 8, 2)),                 # 1: block
        nn.Sequential(*conv(8, 8, 2)),                 # 2: block
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        nn.Linear(8, num_classes),                     # head
    ])


DRIVER = '''
import json, os, sys
from pathlib import Path

import thawkit
import torch
from thawkit.plugins.train import train

recipe, out = thawkit.load_recipe(sys.argv[1]), Path(sys.argv[2])
run_dir = Path(recipe.train.output).resolve()
rank = int(os.environ["RANK"])
writes = []
if rank != 0:  # watch every write of this process under the run directory
    import builtins
    _open, _os_open, _mkdir = builtins.open, os.open, os.mkdir

    def under(path):
        try:
            return Path(os.fspath(path)).resolve().is_relative_to(run_dir)
        except TypeError:
            return False

    def watched_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and under(file):
            writes.append(str(file))
        return _open(file, mode, *a, **k)

    def watched_os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            writes.append(str(path))
        return _os_open(path, flags, *a, **k)

    def watched_mkdir(path, *a, **k):
        if under(path):
            writes.append(str(path))
        return _mkdir(path, *a, **k)

    builtins.open, os.open, os.mkdir = watched_open, watched_os_open, watched_mkdir
last = {}
outcome = train(recipe, on_step=lambda t: last.update(trainer=t))
model = last["trainer"].s.model
torch.save({k: v.detach().clone() for k, v in model.named_parameters()}, out / f"rank{rank}.pt")
# the command line in the same processes, as `torchrun -m thawkit train` runs it: stopped after
# epoch 1, a copy kept for a one-process resume, then resumed with 2 processes
from thawkit.plugins.cli import main
stopped = out / "stopped"
codes = [main(["train", sys.argv[1], "--output", str(stopped), "--stop-after", "1"])]
if rank == 0:
    import shutil
    shutil.copytree(stopped, out / "stopped_one")
codes.append(main(["train", "--resume", str(stopped)]))
# a Ctrl-C in rank 1 alone, after step 2 of epoch 2: every process stops after step 3 with a
# mid-epoch checkpoint, and the resumed run ends as the uninterrupted one
from thawkit.plugins.train import resume


def ctrl_c(trainer):
    if rank == 1 and trainer.state.epoch == 1 and trainer.state.step == 2:
        trainer.interrupt_requested = True


interrupted = thawkit.load_recipe(sys.argv[1], overrides=[f"train.output={out / 'interrupted'}"])
first = train(interrupted, on_step=ctrl_c)
print(f"rank {rank}: {first.message}")
statuses = [first.status]
statuses.append(resume(out / "interrupted").status)
# the run's events on both processes; rank 1 alone asks to stop after epoch 1 (quiet: the
# counts of printed lines above stay those of the runs before)
class Events:
    def __init__(self):
        self.seen = []

    @thawkit.hookimpl
    def thawkit_epoch_end(self, run, epoch, metrics):
        self.seen.append([epoch, run.is_main, metrics["val_loss"]])
        if rank == 1 and epoch == 1:
            run.request_stop("rank 1 saw enough")

    @thawkit.hookimpl
    def thawkit_run_end(self, run, status):
        self.seen.append([status, run.stop_reason])


events = Events()
early = thawkit.load_recipe(sys.argv[1], overrides=[f"train.output={out / 'early'}"])
train(early, callbacks=[events], log=lambda line: None)
(out / f"events{rank}.json").write_text(json.dumps(events.seen))
# adapters (lora through PEFT) under DDP, when the fixture gives their recipe
if len(sys.argv) > 4:
    train(thawkit.load_recipe(sys.argv[4]), on_step=lambda t: last.update(trainer=t))
    torch.save(last["trainer"].s.model.state_dict(), out / f"lora{rank}.pt")
# the embedding guide's torchrun example, last: it ends the process group
import runpy
runpy.run_path(sys.argv[3], run_name="__main__")
(out / f"rank{rank}.json").write_text(json.dumps({"status": outcome.status, "writes": writes,
                                                  "codes": codes, "statuses": statuses}))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "THAWKIT_PLUGINS": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def recipe(data: Path, out: Path) -> dict:
    # 18 training images in global batches of 5: 5, 5, 5, 3 (the last split 2 + 1, unequal
    # shares); 9 validation images: 5 + 4 (no padding)
    return recipe_dict(data, out, backbone={"name": "test_train_distributed:gn_net", "kwargs": {}},
                       strategy={"name": "gradual", "every": 1},
                       optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
                       schedule={"name": "constant", "warmup_epochs": 0},
                       data={"batch_size": 5}, train={"epochs": 3})


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def rows(run: Path) -> list[dict]:
    out = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in out:
        r.pop("seconds")
    return out


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Under torchrun with 2 processes (the driver above): a 3-epoch gradual run through the API,
    then the command line: the same run stopped after epoch 1, and resumed."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = make_data(tmp / "data")
    path = write_recipe(tmp / "recipe.yaml", recipe(data, tmp / "ddp"))
    (tmp / "driver.py").write_text(DRIVER)
    example = TESTS.parent / "examples" / "ddp_gradual.py"
    lora = []
    if importlib.util.find_spec("peft") is not None:  # the same run with lora adapters (thawkit[peft])
        lora = [str(write_recipe(tmp / "lora.yaml", {**recipe(data, tmp / "lora"),
                                                     "strategy": {"name": "lora", "rank": 2}}))]
    result = torchrun(str(tmp / "driver.py"), str(path), str(tmp), str(example), *lora, cwd=tmp)
    return tmp, data, result


def test_both_processes_end_identical_and_thawed_blocks_moved(ddp_run):
    tmp, _, _ = ddp_run
    a = torch.load(tmp / "rank0.pt", weights_only=True)
    b = torch.load(tmp / "rank1.pt", weights_only=True)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    torch.manual_seed(0)  # the run's seed: the backbone as it was built
    initial = dict(gn_net().named_parameters())
    assert all(torch.equal(a[k], initial[k]) for k in a if k.startswith("0."))  # stem: frozen
    for block in ("1.", "2."):  # thawed at epochs 3 and 2
        assert any(not torch.equal(a[k], initial[k]) for k in a if k.startswith(block))


def test_lora_under_torchrun_ranks_identical_and_base_frozen(ddp_run):
    """``thawkit train`` with a lora recipe in the same 2 processes: the adapters are all-reduced
    (both ranks identical), they moved (PEFT starts lora_B at zero), the base did not."""
    tmp, _, _ = ddp_run
    if not (tmp / "lora").is_dir():
        pytest.skip("peft is not installed (thawkit[peft])")
    a, b = (torch.load(tmp / f"lora{r}.pt", weights_only=True) for r in (0, 1))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    lora_b = [k for k in a if ".lora_B." in k]
    assert {k.split(".lora_B.")[0] for k in lora_b} == {"1.0", "2.0"}  # the blocks' convs
    assert all(a[k].abs().sum() > 0 for k in lora_b)
    torch.manual_seed(0)  # the run's seed: the backbone as it was built
    initial = gn_net().state_dict()
    base = {k.replace(".base_layer.", "."): v for k, v in a.items()
            if ".lora_" not in k and not k.startswith("4.")}
    assert sorted(base) == sorted(k for k in initial if not k.startswith("4."))
    assert [k for k in base if not torch.equal(base[k], initial[k])] == []
    assert json.loads((tmp / "lora" / "run.json").read_text())["status"] == "finished"


def test_rank_0_alone_writes_the_run_directory(ddp_run):
    tmp, _, result = ddp_run
    assert json.loads((tmp / "rank1.json").read_text()) == {
        "status": "finished", "writes": [], "codes": [0, 0], "statuses": ["interrupted", "finished"]}
    assert json.loads((tmp / "rank0.json").read_text())["codes"] == [0, 0]
    run = tmp / "ddp"
    assert [r["epoch"] for r in rows(run)] == [1, 2, 3]  # one writer: each epoch once
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no stray temporary files
    new_runs = 3 + (tmp / "lora").is_dir()  # the lora run where peft is installed
    assert result.stdout.count("2 processes (DDP, gloo") == new_runs  # one process speaks
    assert result.stdout.count("stopped after 1 of 3 epochs") == 1
    # the cache is off in every phase for one reason: said once, not before every epoch
    assert "cache off for epochs 1-3: 2 processes (torchrun)" in result.stdout
    assert "cache off for epoch 2:" not in result.stdout and "cache off for epoch 3:" not in result.stdout


def test_equals_one_process_with_the_same_global_batch(ddp_run, pm):
    from thawkit.plugins.train import train

    tmp, data, _ = ddp_run
    one = tmp / "one"
    assert train(load(recipe(data, one), pm), log=lambda s: None).status == "finished"
    a, b = weights(tmp / "ddp" / "model.safetensors"), weights(one / "model.safetensors")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert 0 <= diff < ATOL
    for r2, r1 in zip(rows(tmp / "ddp"), rows(one)):
        assert r2["val_top1"] * 9 == pytest.approx(round(r2["val_top1"] * 9))  # 9 images, once each
        assert r2["val_top1"] == r1["val_top1"] and r2["trainable_params"] == r1["trainable_params"]
        assert r2["val_loss"] == pytest.approx(r1["val_loss"], abs=1e-5)
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], abs=1e-5)


def test_resume_same_world_is_bit_identical_other_world_says_so(ddp_run, pm):
    """Stopped after epoch 1 and resumed with 2 processes (the command line, in the driver):
    bit-identical to the uninterrupted run. Resumed in 1 process: it says what changes, and
    still ends within float tolerance."""
    from thawkit.plugins.train import resume

    tmp, _, result = ddp_run
    assert "resuming" in result.stdout and "checkpoint was written by" not in result.stdout
    assert (tmp / "stopped" / "model.safetensors").read_bytes() == \
        (tmp / "ddp" / "model.safetensors").read_bytes()
    assert rows(tmp / "stopped") == rows(tmp / "ddp")
    # Ctrl-C in one process: all stopped after the same step, mid-epoch, and resumed exactly
    assert json.loads((tmp / "rank0.json").read_text())["statuses"] == ["interrupted", "finished"]
    assert "rank 0: interrupted at epoch 2, step 3;" in result.stdout
    assert "rank 1: interrupted at epoch 2, step 3;" in result.stdout
    assert (tmp / "interrupted" / "model.safetensors").read_bytes() == \
        (tmp / "ddp" / "model.safetensors").read_bytes()
    lines: list[str] = []
    assert resume(tmp / "stopped_one", pm=pm, log=lines.append).status == "finished"
    said = " ".join(lines)
    assert "written by 2 processes, this run has 1" in said and "not bit-identical" in said
    a, b = weights(tmp / "stopped_one" / "model.safetensors"), weights(tmp / "ddp" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < ATOL


def test_request_stop_in_one_process_stops_both_after_the_same_epoch(ddp_run):
    """Callbacks hear the events on every process (``run.is_main`` on rank 0 only), with the
    same metrics; rank 1's request_stop ends both after epoch 1, and rank 0 records why."""
    tmp, _, _ = ddp_run
    seen = [json.loads((tmp / f"events{r}.json").read_text()) for r in (0, 1)]
    assert [s[0][:2] for s in seen] == [[1, True], [1, False]]
    assert seen[0][0][2] == seen[1][0][2]  # val_loss summed over both processes' images
    assert seen[0][1:] == seen[1][1:] == [["stopped", "rank 1 saw enough"]]
    status = json.loads((tmp / "early" / "run.json").read_text())
    assert status["status"] == "stopped" and "rank 1 saw enough" in status["message"]
    assert [r["epoch"] for r in rows(tmp / "early")] == [1]


def test_embedding_example_under_torchrun(ddp_run):
    """examples/ddp_gradual.py (the embedding guide's) with 2 processes: its own check that the
    processes hold identical weights passed, and rank 0 alone printed."""
    _, _, result = ddp_run
    assert result.stdout.count("identical weights in all 2 process(es)") == 1
    assert result.stdout.count("epoch 2: DDP wraps so far 3") == 1


def test_nproc_starts_the_same_command_under_torchrun(tmp_path, monkeypatch, capsys):
    from thawkit.plugins.cli import main

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    path = write_recipe(tmp_path / "r.yaml", recipe(make_data(tmp_path), tmp_path / "run"))
    assert main(["train", "--nproc", "2", str(path), "--stop-after", "1", "--set", "train.seed=3"]) == 0
    assert calls == [[sys.executable, "-m", "torch.distributed.run", "--standalone",
                      "--nproc_per_node=2", "-m", "thawkit", "train", str(path), "--stop-after", "1",
                      "--set", "train.seed=3"]]
    # a recipe's mistakes are found once, before any process starts: one message, exit code 2
    assert main(["train", "--nproc", "6", str(path)]) == 2
    assert main(["train", "--nproc", "2", str(path), "--set", "optimizer.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "data.batch_size is the global batch (5), smaller than the 6 processes" in err
    assert "optimizer.lr" in err and "Traceback" not in err and len(calls) == 1
    monkeypatch.setenv("WORLD_SIZE", "2")  # already one of torchrun's processes
    assert main(["train", "--nproc", "2", str(path)]) == 2
    assert "leave --nproc out under torchrun" in capsys.readouterr().err
    assert main(["probe", "r.yaml", "--lr", "0.1"]) == 2
    assert "thawkit probe runs in one process" in capsys.readouterr().err


@pytest.mark.parametrize("n, batch, size", [(18, 5, 2), (17, 4, 3), (16, 4, 4), (14, 4, 3)])
def test_shards_together_are_the_one_process_batches(n, batch, size):
    from thawkit.plugins.train.data import EpochBatches
    from thawkit.plugins.train.ddp import ShardedBatches

    one = EpochBatches(n, batch, seed=7)
    shards = [ShardedBatches(n, batch, 7, rank, size) for rank in range(size)]
    for epoch in (0, 3):
        one.set_epoch(epoch)
        for s in shards:
            s.set_epoch(epoch)
        steps = list(zip(*[list(s) for s in shards]))
        full = list(one)
        assert len(steps) == shards[0].steps_per_epoch <= len(full)
        for parts, whole in zip(steps, full):
            assert sorted(k for part in parts for k in part) == sorted(whole)  # each image once
            assert all(parts)  # every process has at least one image
        dropped = full[len(steps):]
        assert all(len(b) < size for b in dropped)  # only a last batch too small to share


def test_batch_smaller_than_the_processes_is_refused():
    from thawkit import ConfigError
    from thawkit.plugins.train.ddp import World, shard

    with pytest.raises(ConfigError, match="data.batch_size is the global batch"):
        shard(None, World(rank=0, size=4), batch_size=3, seed=0)  # refused before any loader


def test_sync_bn_keeps_the_norm_policy_and_is_refused_on_cpu(pm):
    """The conversion keeps the module objects (so thawkit's frozen-norm hooks and the optimizer
    still hold them): frozen BatchNorm statistics stay bit-identical, thawed ones update."""
    import thawkit
    from thawkit import ConfigError
    from thawkit.plugins.train.ddp import World, check_sync_bn, convert_sync_bn
    from thawkit.plugins.train.demo_model import small_cnn

    torch.manual_seed(0)
    adapted = thawkit.adapt(small_cnn(width=4), "last-block", num_classes=3, pm=pm)
    model = adapted.model
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert convert_sync_bn(model) == len(bns) > 0
    assert all(type(m) is nn.SyncBatchNorm for m in bns)
    opt = adapted.optimizer("sgd", lr=0.1)
    model.train()  # dist is not initialised here: SyncBatchNorm computes like BatchNorm
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    after = model.state_dict()
    for k, v in before.items():
        frozen = not k.startswith("block3.")
        assert torch.equal(after[k], v) == frozen, k
    check_sync_bn(World(), torch.device("cpu"))  # one process: nothing to synchronise
    with pytest.raises(ConfigError, match="SyncBatchNorm runs on CUDA only"):
        check_sync_bn(World(rank=0, size=2), torch.device("cpu"))
