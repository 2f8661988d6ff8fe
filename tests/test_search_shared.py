"""thawkit search: one set of shared features for the whole search, across ``--jobs`` workers,
sessions and killed writers (plugins/search/shared.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from test_search import finished_trials, recipe_for, run_search, shared_once  # noqa: E402
from test_train import write_folder  # noqa: E402

# a tiny prefix and data set, and a build that counts itself in a file (any process can add to it)
BUILD = textwrap.dedent("""
    import os, sys, time
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from thawkit.plugins.train.features import FeatureCache
    from thawkit.plugins.search.shared import SharedFeatures

    def build(count_file, pause=0.0):
        torch.manual_seed(0)
        prefix = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        x, y = torch.randn(10, 3, 6, 6), torch.arange(10) % 3
        with open(count_file, "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        time.sleep(pause)
        return tuple(FeatureCache(prefix, DataLoader(TensorDataset(x[s], y[s]), batch_size=4))
                     for s in (slice(0, 6), slice(6, 10)))
""")


def run_python(code: str, cwd: Path, **popen) -> subprocess.Popen:
    (cwd / "build.py").write_text(BUILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(cwd)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def builds(count_file: Path) -> list[str]:
    return count_file.read_text().split() if count_file.exists() else []


def test_processes_that_need_the_same_features_compute_them_once(tmp_path):
    """Two processes ask for one key at once: one computes and writes, the other waits and reads;
    a later session (a new SharedFeatures on the folder) reads them too."""
    code = """
        import sys
        from pathlib import Path
        from build import build, SharedFeatures
        shared = SharedFeatures(Path("features"))
        train, val = shared.get("head-k1", lambda: build("builds.txt", pause=1.5))
        print("SUM", float(train.take(list(range(len(train))))[0].sum()), len(val), shared.builds,
              shared.reuses)
    """
    procs = [run_python(code, tmp_path) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert len(builds(tmp_path / "builds.txt")) == 1, outputs
    sums = [line for out in outputs for line in out.splitlines() if line.startswith("SUM")]
    assert len(sums) == 2 and sums[0].split()[1:3] == sums[1].split()[1:3]
    assert sorted(s.split()[3:] for s in sums) == [["0", "1"], ["1", "0"]]  # built, reused
    sys.path.insert(0, str(tmp_path))
    try:
        from build import SharedFeatures, build

        shared = SharedFeatures(tmp_path / "features")
        train, val = shared.get("head-k1", lambda: build(str(tmp_path / "builds.txt")))
        own_train, own_val = build(str(tmp_path / "own.txt"))
        assert (shared.builds, shared.reuses) == (0, 1)
        assert train.path is not None and train.path.parent == tmp_path / "features" / "head-k1"
        for mapped, own in ((train, own_train), (val, own_val)):
            every = list(range(len(own)))
            assert mapped.take(every)[0].equal(own.take(every)[0])
            assert mapped.take(every)[1].equal(own.take(every)[1])
        assert shared.get("head-k1", lambda: build("never.txt")) == (train, val)  # in-process
        shared.remove()
        assert not (tmp_path / "features").exists()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("build", None)


def test_a_half_written_entry_of_a_killed_writer_is_never_read_and_is_rebuilt(tmp_path):
    """The writer is killed (SIGKILL) after writing the train features: the entry is not in place;
    the next process removes what it left and computes the features again. A damaged entry
    (a truncated file) is rebuilt as well."""
    code = """
        import os, signal
        from pathlib import Path
        from build import build, SharedFeatures, FeatureCache
        real = FeatureCache.save
        def save_then_die(self, folder, name="features"):
            real(self, folder, name)
            if name == "train":
                os.kill(os.getpid(), signal.SIGKILL)
        FeatureCache.save = save_then_die
        SharedFeatures(Path("features")).get("head-k1", lambda: build("builds.txt"))
    """
    proc = run_python(code, tmp_path)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == -9, output
    features = tmp_path / "features"
    left = [p.name for p in features.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and (features / left[0] / "train.npy").is_file()
    assert not (features / "head-k1").exists()
    sys.path.insert(0, str(tmp_path))
    try:
        from build import SharedFeatures, build

        shared = SharedFeatures(features)
        train, val = shared.get("head-k1", lambda: build(str(tmp_path / "builds.txt")))
        assert (shared.builds, shared.reuses) == (1, 0)
        assert len(builds(tmp_path / "builds.txt")) == 2 and len(train) == 6 and len(val) == 4
        assert not [p for p in features.iterdir() if p.name.endswith(".tmp")]
        shared.close()
        npy = features / "head-k1" / "val.npy"
        npy.write_bytes(npy.read_bytes()[:-8])  # damaged after the fact
        again = SharedFeatures(features)
        train, val = again.get("head-k1", lambda: build(str(tmp_path / "builds.txt")))
        assert (again.builds, again.reuses) == (1, 0) and len(val) == 4
        again.remove()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("build", None)


def test_the_key_changes_with_what_changes_the_features(tmp_path, pm):
    """A stale entry is never used: other weights, another file, another dtype give another key."""
    import torch
    from thawkit import validate_recipe
    from thawkit.plugins.split import frozen_prefix
    from thawkit.plugins.train.session import prepare, torch_flags_restored

    from thawkit.plugins.search.trial import feature_key

    write_folder(tmp_path / "train", per_class=3, seed=1)
    write_folder(tmp_path / "val", per_class=2, seed=2)
    base = recipe_for(tmp_path, tmp_path, strategy={"name": "head-only"})

    def key(**train):
        data = {**base, "train": {**base["train"], **train}}
        with torch_flags_restored():  # prepare() sets the run's determinism flags
            session = prepare(validate_recipe(data, where="test", pm=pm), run_dir=tmp_path / "run")
        frozen = frozen_prefix(session.adapted, 0)
        return feature_key(session, frozen.block, frozen.split.prefix), session, frozen

    first, session, frozen = key()
    assert first.startswith("head-") and key()[0] == first
    assert key(cache_dtype="float16")[0] != first
    assert key(seed=5)[0] != first  # the python factory's random backbone: other weights
    with torch.no_grad():
        next(frozen.split.prefix.parameters()).add_(1)
    assert feature_key(session, frozen.block, frozen.split.prefix) != first
    image = next((tmp_path / "train").rglob("*.png"))
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed
    assert key()[0] != first


@pytest.mark.slow
def test_jobs_2_compute_each_boundary_once_and_train_as_one_process_would(tmp_path, pm):
    from thawkit.plugins.search.shared import SharedFeatures
    from thawkit.plugins.search.trial import Reporter, run_trial

    data = tmp_path / "data"
    write_folder(data / "train", per_class=10, seed=1)
    write_folder(data / "val", per_class=4, seed=2)
    out = tmp_path / "s"
    result, lines = run_search(recipe_for(data, tmp_path), out, pm, trials=9, jobs=2,
                               strategies="head-only,lp-ft,last-block")
    trials = finished_trials(out)
    assert len({t.user_attrs["pid"] for t in trials if t.number >= 4}) == 2  # both workers ran
    assert {k: result["caches"][k] for k in ("built", "reused")} == shared_once(result["trials"])
    assert result["caches"]["seconds"] > 0
    assert not (out / "features").exists()  # deleted when the search finished
    # a trial on another process's features trains as it does on its own process's
    for t in result["trials"]:
        if t["number"] < 4 or t["state"] != "complete":
            continue
        info = json.loads((out / "trials" / f"{t['number']:04d}" / "trial.json").read_text())
        alone = run_trial(info["recipe"], tmp_path / "alone" / str(t["number"]),
                          shared=SharedFeatures(), reporter=Reporter(lambda epoch, top1: False),
                          pm=pm, scratch=tmp_path / "scratch")
        assert (alone.features["built"], alone.features["reused"]) == (1, 0)
        assert alone.holdout_top1 == pytest.approx(t["holdout_top1"], abs=1e-6)
        assert [e["holdout_loss"] for e in alone.epochs] == pytest.approx(
            [e["holdout_loss"] for e in info["epochs"]], rel=1e-4)
