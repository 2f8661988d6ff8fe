"""thawkit search: LogME, Auto-RGN, the search engine on a tiny CNN, its files and its errors."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("optuna")

from test_train import load, recipe_dict, write_folder, write_recipe  # noqa: E402


# ------------------------------------------------------------------ LogME
def direct_log_evidence(f, y, alpha, beta):
    """log N(y; 0, beta^-1 I + alpha^-1 F F^T): the marginal likelihood written out, no SVD."""
    n = f.shape[0]
    c = np.eye(n) / beta + f @ f.T / alpha
    return -n / 2 * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(c)[1] - 0.5 * y @ np.linalg.solve(c, y)


def test_logme_evidence_equals_the_marginal_likelihood_by_hand():
    from thawkit.plugins.search.logme import log_evidence

    # a case small enough for pencil: n = 2, d = 1, F = [1, 1]^T, y = [1, 0], alpha = beta = 1:
    # C = I + F F^T = [[2, 1], [1, 2]], |C| = 3, C^-1 = [[2, -1], [-1, 2]] / 3, y^T C^-1 y = 2/3
    by_hand = -np.log(2 * np.pi) - 0.5 * np.log(3) - 0.5 * 2 / 3
    assert log_evidence(np.array([[1.0], [1.0]]), np.array([1.0, 0.0]), 1.0, 1.0) == pytest.approx(by_hand)
    rng = np.random.default_rng(0)
    for n, d in ((6, 3), (3, 5)):  # more samples than features, and fewer
        f, y = rng.normal(size=(n, d)), rng.integers(0, 2, n).astype(float)
        assert log_evidence(f, y, 0.7, 2.5) == pytest.approx(direct_log_evidence(f, y, 0.7, 2.5))


def test_logme_fixed_point_maximises_the_evidence_and_ranks_features():
    from thawkit.plugins.search.logme import fit_evidence, log_evidence, logme

    rng = np.random.default_rng(1)
    f, y = rng.normal(size=(40, 4)), rng.integers(0, 2, 40).astype(float)
    best, alpha, beta = fit_evidence(f, y)
    for a in (0.8, 1.25):
        for b in (0.8, 1.25):
            assert log_evidence(f, y, alpha * a, beta * b) < best
    labels = np.repeat([0, 1, 2], 30)
    separable = np.eye(3)[labels] * 3 + rng.normal(scale=0.3, size=(90, 3))
    noise = rng.normal(size=(90, 3))
    assert logme(separable, labels) > logme(noise, labels) + 0.5
    with pytest.raises(ValueError, match="n x d"):
        logme(np.zeros(5), labels[:5])


# ------------------------------------------------------------------ Auto-RGN
def test_relative_gradient_norms_by_block_and_rates_that_follow_them(pm):
    import torch
    from thawkit import adapt
    from thawkit.plugins.strategies.auto_rgn import FLOOR, relative_gradient_norms, update_rates

    from thawkit.plugins.train.demo_model import small_cnn

    torch.manual_seed(0)
    adapted = adapt(small_cnn(width=4), "auto-rgn", num_classes=3, pm=pm)
    model, layout = adapted.model.eval(), adapted.layout  # eval: BatchNorm statistics stay
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = relative_gradient_norms(model, layout, [(x, y)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    by_hand = {}
    for b in layout.all_blocks:
        g = math.sqrt(sum(float(dict(model.named_parameters())[n].grad.pow(2).sum()) for n in b.params))
        w = math.sqrt(sum(float(dict(model.named_parameters())[n].detach().pow(2).sum()) for n in b.params))
        by_hand[b.name] = g / w
    top = max(by_hand.values())
    assert norms == pytest.approx({k: v / top for k, v in by_hand.items()})
    assert max(norms.values()) == 1.0

    optimizer = adapted.optimizer("adamw", lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(names.values())  # every parameter in exactly one group
    update_rates(adapted, optimizer, scheduler, norms)
    halved = {**norms, "head": 0.5}
    update_rates(adapted, optimizer, scheduler, halved)  # replaces the factor, never compounds it
    block_of = layout.block_of()
    for i, g in enumerate(optimizer.param_groups):
        factor = max(halved[block_of[names[id(g["params"][0])]]], FLOOR)
        assert g["lr"] == pytest.approx(0.05 * factor)
        assert scheduler.base_lrs[i] == pytest.approx(0.1 * factor)
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [0.5 * b for b in scheduler.base_lrs])


# ------------------------------------------------------------------ the search
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("searchdata")
    write_folder(root / "train", per_class=10, seed=1)
    write_folder(root / "val", per_class=4, seed=2)
    return root


def recipe_for(data: Path, tmp: Path, **sections) -> dict:
    sections = {"data": {"augment": False}, "schedule": {"name": "constant", "warmup_epochs": 0},
                "train": {"epochs": 3}, **sections}
    return recipe_dict(data, tmp / "run", **sections)


def run_search(recipe: dict, out: Path, pm, **kwargs):
    from thawkit.plugins.search import search

    lines: list[str] = []
    result = search(load(recipe, pm), output=out, log=lines.append, **kwargs)
    return result, lines


def trial_states(out: Path) -> list[dict]:
    return json.loads((out / "search.json").read_text())["trials"]


def test_search_writes_its_report_and_picks_the_same_twice(tmp_path, data, pm):
    recipe = recipe_for(data, tmp_path)
    strategies = "head-only,last-block,full"
    first, lines = run_search(recipe, tmp_path / "a", pm, trials=6, strategies=strategies, seed=3)
    second, _ = run_search(recipe, tmp_path / "b", pm, trials=6, strategies=strategies, seed=3)
    strip = [{k: t[k] for k in ("strategy", "params", "state", "holdout_top1")} for t in first["trials"]]
    assert strip == [{k: t[k] for k in ("strategy", "params", "state", "holdout_top1")}
                     for t in second["trials"]]
    assert first["best"]["trial"] == second["best"]["trial"]
    assert len(first["trials"]) == 6
    assert [t["strategy"] for t in first["trials"][:4]] == ["head-only"] * 4  # one batch of heads
    out = tmp_path / "a"
    for name in ("leaderboard.md", "search.json", "search.png", "best.yaml", "study.db"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "search.json").read_text())
    done = [t for t in saved["trials"] if t["state"] == "complete"]
    top = max(done, key=lambda t: t["holdout_top1"])
    if saved["best"]["as_written"]:  # kept: no trial leads it beyond two paired standard errors
        from thawkit.plugins.search.report import challenger_margin

        held = {t["number"]: json.loads((out / "trials" / f"{t['number']:04d}" / "trial.json").read_text())
                ["holdout"] for t in done}
        own = next(t for t in done if t["number"] == saved["best"]["trial"])
        assert all(challenger_margin(t, own, held) <= 0 for t in done
                   if t["trainable_params"] >= own["trainable_params"])
    else:
        assert saved["best"]["holdout_top1"] >= top["holdout_top1"] - 0.25
    assert 0 <= saved["best"]["val_top1"] <= 1
    assert {r["strategy"] for r in saved["evidence"]["logme"]} >= {"head-only", "last-block blocks=1"}
    assert set(saved["evidence"]["rgn"]) >= {"stem", "head"}
    board = (out / "leaderboard.md").read_text()
    assert "(pick)" in board and "head-only" in board
    assert any(line.startswith("trial 5: ") and "to go" in line for line in lines)
    # the hold-out is carved from data.train, stratified, and never data.val
    holdout = sorted(p.name for p in (out / "data" / "holdout").iterdir())
    assert holdout == ["cat", "dog", "eel"]
    linked = {os.path.realpath(f) for f in (out / "data" / "holdout").rglob("*.png")}
    assert linked and all(str(data / "train") in f for f in linked)
    # best.yaml is a complete recipe that thawkit train runs as it is
    from thawkit import load_recipe
    from thawkit.plugins.train import train

    best = load_recipe(out / "best.yaml", pm=pm, overrides=["train.epochs=1"])
    assert best.strategy.name == saved["best"]["strategy"]
    assert best.data.val == str(data / "val")
    assert train(best, log=lambda line: None).status == "finished"


def test_trial_files_hold_no_copy_of_the_frozen_backbone(tmp_path, data, pm):
    from safetensors.torch import load_file
    from thawkit.plugins.search.trial import restore_trial

    result, _ = run_search(recipe_for(data, tmp_path), tmp_path / "s", pm, trials=5,
                           strategies="head-only,last-block")
    frozen_always = ("stem.", "block1.")  # last-block trains at most 3 blocks + head of small_cnn
    for t in result["trials"]:
        folder = tmp_path / "s" / "trials" / f"{t['number']:04d}"
        trained = load_file(str(folder / "trained.safetensors"))
        assert trained
        if t["strategy"] == "head-only":
            assert all(k.startswith("fc.") for k in trained), sorted(trained)
        assert not any(k.startswith(frozen_always) for k in trained) or \
            t["params"].get("blocks") == 3
        info = json.loads((folder / "trial.json").read_text())
        assert len(info["fingerprint"]) == 64 and info["unchanged"] > 0
        model = restore_trial(folder, pm, 3)
        for k, v in trained.items():
            assert model.state_dict()[k].equal(v)
    # a changed backbone no longer matches the fingerprint
    folder = tmp_path / "s" / "trials" / "0000"
    info = json.loads((folder / "trial.json").read_text())
    info["recipe"]["train"]["seed"] = 99  # another random backbone for the python factory
    (folder / "trial.json").write_text(json.dumps(info))
    with pytest.raises(Exception, match="fingerprint"):
        restore_trial(folder, pm, 3)


def test_cached_trials_share_features_computed_once(tmp_path, data, pm):
    result, _ = run_search(recipe_for(data, tmp_path), tmp_path / "s", pm, trials=6,
                           strategies="head-only,lp-ft")
    caches = result["caches"]
    lpft = [t for t in result["trials"] if t["strategy"] == "lp-ft"]
    assert lpft  # lp-ft's probe stage takes the head-only features of the batch of heads
    # and so does a head-only trial outside the batch (the recipe's own, queued first)
    single_heads = [t for t in result["trials"][4:] if t["strategy"] == "head-only"]
    assert caches["built"] == 1 and caches["reused"] == len(lpft) + len(single_heads)


def test_a_diverging_trial_is_recorded_failed_and_the_search_goes_on_then_trains_the_pick(
        tmp_path, data, pm, monkeypatch):
    from thawkit.plugins.search import space

    monkeypatch.setitem(space.LR_RANGES, "full", (1e8, 1e9))
    result, lines = run_search(recipe_for(data, tmp_path), tmp_path / "s", pm, trials=6,
                               strategies="head-only,full", train=True)
    failed = [t for t in result["trials"] if t["state"] == "failed"]
    assert failed and all("nan" in t["reason"].lower() or "inf" in t["reason"] for t in failed)
    assert len(result["trials"]) == 6 and result["best"]["strategy"] == "head-only"
    assert "failed" in (tmp_path / "s" / "leaderboard.md").read_text()
    # train=True (--train) continued into the full run of the pick, as best.yaml says
    assert result["train"]["status"] == "finished"
    assert (tmp_path / "s" / "best" / "model.safetensors").is_file()


def test_budget_stops_starting_trials_that_would_not_fit(tmp_path, data, pm):
    budget = 8.0
    result, lines = run_search(recipe_for(data, tmp_path), tmp_path / "s", pm, budget=f"{budget:g}s",
                               strategies="head-only,full")
    b = result["budget"]
    longest = max(t["seconds"] or 0 for t in result["trials"])
    # within the budget plus one trial (and the report's own evaluation after the last one)
    assert b["spent"] - (b["evidence"] or 0) <= budget + longest + 5
    assert any("budget left" in line for line in lines)


# ------------------------------------------------------------------ the command
def cli(*args, cwd=None, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "THAWKIT_PLUGINS": ""}
    return subprocess.run([sys.executable, "-m", "thawkit", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--budget", "0s"], "leaves no time"),
    (["--budget", "soon"], "not a duration"),
    (["--trials", "3", "--strategies", "ful,head-only"], "did you mean full"),
    (["--trials", "3", "--storage", "nosuchdb://x/y"], "--storage: Optuna cannot open"),
    (["--trials", "3", "--set", "optimizer.lrs={stem: 0.1}"], "optimizer.lrs"),
    ([], "--budget DURATION or --trials N"),
    (["--trials", "3", "--holdout", "1.5"], "--holdout: a fraction"),
])
def test_bad_input_is_one_clear_error_and_nothing_written(tmp_path, data, args, message):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_for(data, tmp_path))
    out = tmp_path / "out"
    result = cli("search", str(recipe), "--output", str(out), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_help_does_not_import_torch_or_optuna():
    code = ("import sys; from thawkit.plugins.cli import main\ntry: main(['search', '--help'])\n"
            "except SystemExit: pass\nprint('torch' in sys.modules, 'optuna' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().endswith("False False"), out.stdout + out.stderr


def running_numbers(out: Path) -> list[int]:
    """Numbers of the running trials, read without creating anything (Optuna's loader would
    create its tables and race the search that creates them)."""
    import sqlite3

    if not (out / "study.db").exists():
        return []
    try:
        with sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True) as db:
            return [n for (n,) in db.execute("SELECT number FROM trials WHERE state = 'RUNNING'")]
    except sqlite3.Error:  # not created yet, or locked for a moment
        return []


def finished_trials(out: Path) -> list:
    import optuna

    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.load_study(study_name="thawkit-search", storage=storage)
    return study.get_trials(deepcopy=False)


@pytest.mark.slow
@pytest.mark.parametrize("sig, why", [(signal.SIGKILL, "killed"), (signal.SIGINT, "interrupted")])
def test_a_killed_or_interrupted_search_resumes_with_the_same_command(tmp_path, data, sig, why):
    # trials long enough (scratch runs are quick) for the signal to land inside one
    recipe = write_recipe(tmp_path / "r.yaml", recipe_for(data, tmp_path, train={"epochs": 30}))
    out = tmp_path / "out"
    args = ["search", str(recipe), "--output", str(out), "--trials", "7",
            "--strategies", "head-only,full"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "THAWKIT_PLUGINS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "thawkit", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # wait until the heads are done and a full trial runs
            time.sleep(0.5)
            running = running_numbers(out)
            if running and max(running) >= 5:  # trial 5: the first full trial, the longest
                break
        os.kill(proc.pid, sig)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGINT:  # stopped cleanly after its step: exit 130, says how to continue
        assert proc.returncode == 130, output
        assert "run the same command again" in output
    before = {t.number: t.value for t in finished_trials(out) if t.state.name == "COMPLETE"}
    assert len(before) >= 4 and not (out / "search.json").exists()
    # the heads' features stay for the session that continues the search
    assert [p.name.split("-")[0] for p in (out / "features").iterdir() if p.is_dir()] == ["head"]
    result = cli(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (out / "features").exists()  # the search finished: its features are deleted
    trials = finished_trials(out)
    assert {t.number: t.value for t in trials if t.number in before} == before
    stopped = [t for t in trials if why in t.user_attrs.get("reason", "")]
    assert len(stopped) == 1 and stopped[0].state.name == "FAIL"
    counted = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED") or t.user_attrs.get("counts")]
    assert len(counted) == 7
    saved = json.loads((out / "search.json").read_text())
    assert saved["best"] is not None and len(saved["trials"]) == 8


@pytest.mark.slow
def test_jobs_run_worker_processes_on_one_study(tmp_path, data):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_for(data, tmp_path))
    out = tmp_path / "out"
    result = cli("search", str(recipe), "--output", str(out), "--trials", "7", "--jobs", "2",
                 "--strategies", "head-only,last-block,full")
    assert result.returncode == 0, result.stdout + result.stderr
    trials = finished_trials(out)
    pids = {t.user_attrs.get("pid") for t in trials if t.number >= 4}
    assert len(pids) == 2, pids
    assert sum(1 for t in trials if t.state.name in ("COMPLETE", "PRUNED")) == 7
    assert "[worker 1]" in result.stdout and "[worker 2]" in result.stdout
    saved = json.loads((out / "search.json").read_text())
    caches = saved["caches"]  # over every process, each boundary once
    assert {k: caches[k] for k in ("built", "reused")} == shared_once(saved["trials"])
    assert not (out / "features").exists()


def shared_once(trials: list[dict]) -> dict:
    """``caches`` when every boundary's features are computed once for the whole search: the batch
    of heads (trials 0-3) builds the head's features; every later trial that can share
    (head-only, lp-ft's probe, last-block) builds its boundary's if none did before, else reuses."""
    later = [t for t in trials if t["number"] >= 4 and not t["reason"].startswith("not started")
             and t["strategy"] in ("head-only", "lp-ft", "last-block")]
    boundaries = {"head"} | {t["params"]["blocks"] if t["strategy"] == "last-block" else "head"
                             for t in later}
    return {"built": len(boundaries), "reused": 1 + len(later) - len(boundaries)}


def test_the_docs_report_is_in_the_format_the_search_writes():
    """docs/choosing.md shows docs/snippets/search_digits.txt (tests/test_examples.py ties them);
    here the snippet's leaderboard must have the columns leaderboard.md has today."""
    from thawkit.plugins.search.report import leaderboard

    root = Path(__file__).resolve().parent.parent
    snippet = (root / "docs" / "snippets" / "search_digits.txt").read_text()
    result = {"budget": {"spent": 1.0, "seconds": None, "evidence": 0.0, "in_trials": 0.0,
                         "not_started": []}, "caches": {"built": 0, "reused": 0}}
    header = leaderboard([], {}, None, {}, result).splitlines()[0]
    assert header in snippet.splitlines()
    assert snippet.startswith("$ thawkit search ") and "\npick: trial " in snippet
    assert "LogME below 'head'" in snippet and "Auto-RGN relative gradient norms" in snippet


def test_the_pick_is_the_best_top1_with_ties_within_paired_noise_going_to_the_cheaper():
    from thawkit.plugins.search.report import paired_noise, pick

    def row(number, strategy, top1, loss, params, state="complete"):
        return {"number": number, "strategy": strategy, "holdout_top1": top1, "holdout_loss": loss,
                "trainable_params": params, "state": state}

    # paired: the standard error of the mean per-image difference, by hand
    a, b = [0.1, 0.5, 0.2, 0.9], [0.2, 0.4, 0.6, 0.9]
    diffs = [-0.1, 0.1, -0.4, 0.0]
    mean = sum(diffs) / 4
    by_hand = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3 / 4)
    assert paired_noise(a, b) == pytest.approx(by_hand)
    assert paired_noise(a, a) == 0.0 and paired_noise(None, a) == 0.0 and paired_noise(a, b[:3]) == 0.0

    rows = [row(0, "full", 0.90, 0.30, 1000), row(1, "last-block", 0.90, 0.32, 400),
            row(2, "head-only", 0.85, 0.20, 10), row(3, "gradual", 0.95, 0.1, 1000, "pruned")]
    close = {0: {"losses": [0.3, 0.1, 0.5, 0.3]}, 1: {"losses": [0.4, 0.1, 0.5, 0.28]},
             2: {"losses": [0.2, 0.2, 0.2, 0.2]}}
    # the same top-1, a loss within one paired standard error of the best's: cheaper wins
    assert paired_noise(close[1]["losses"], close[0]["losses"]) > 0.02
    assert pick(rows, close)["number"] == 1
    # the same losses shifted so that every image is worse by 0.02: a real difference, no tie
    far = {0: {"losses": [0.3, 0.1, 0.5, 0.3]}, 1: {"losses": [0.32, 0.12, 0.52, 0.32]}}
    assert paired_noise(far[1]["losses"], far[0]["losses"]) == pytest.approx(0.0, abs=1e-9)
    assert pick(rows, far)["number"] == 0
    # without per-image losses only equal losses tie
    assert pick(rows)["number"] == 0
    # a lower top-1 never ties, however low its loss and few its parameters (the old rule's flaw)
    assert pick(rows[:1] + rows[2:], close)["number"] == 0
    same_cost = [row(4, "gradual", 1.0, 0.12, 1000), row(5, "lp-ft", 1.0, 0.16, 1000)]
    assert pick(same_cost)["number"] == 4    # equal cost and top-1: the lower hold-out loss
    assert pick([row(6, "full", None, None, 5, "failed")]) is None


def test_the_recipe_as_written_stays_the_pick_unless_beaten_on_top1_beyond_noise_or_cost():
    from thawkit.plugins.search.confirm import finalists
    from thawkit.plugins.search.report import challenger_margin, pick

    def row(number, strategy, top1, loss, params, written=False):
        return {"number": number, "strategy": strategy, "holdout_top1": top1, "holdout_loss": loss,
                "trainable_params": params, "state": "complete", "as_written": written}

    def scores(hits, losses):
        return {"correct": hits, "losses": losses}

    ten = [True] * 10
    own = row(4, "full", 1.0, 0.33, 1000, written=True)
    sharper = row(13, "full", 1.0, 0.06, 1000)          # the same hits, a far lower loss
    per_image = {4: scores(ten, [0.33] * 10), 13: scores(ten, [0.06] * 10)}
    # without the incumbent the lower loss wins, as before; with it, the recipe stays
    assert pick([sharper, dict(own, as_written=False)], per_image)["number"] == 13
    assert pick([own, sharper], per_image)["number"] == 4
    # ahead by one image of ten (one paired standard error 0.1) or three (0.153: 0.3 < 2 x 0.153):
    # within two standard errors, still the recipe
    one_wrong = [True] * 9 + [False]
    assert pick([dict(own, holdout_top1=0.9), sharper],
                {**per_image, 4: scores(one_wrong, [0.33] * 10)})["number"] == 4
    three_wrong = [True] * 7 + [False] * 3
    beaten = {**per_image, 4: scores(three_wrong, [0.33] * 10)}
    assert challenger_margin(sharper, dict(own, holdout_top1=0.7), beaten) < 0
    assert pick([dict(own, holdout_top1=0.7), sharper], beaten)["number"] == 4
    # ahead by four of ten: beyond the noise (0.4 > 2 x 0.163), the challenger wins
    four_behind = {**per_image, 4: scores([True] * 6 + [False] * 4, [0.33] * 10)}
    assert challenger_margin(sharper, dict(own, holdout_top1=0.6), four_behind) > 0
    assert pick([dict(own, holdout_top1=0.6), sharper], four_behind)["number"] == 13
    # a cheaper winner of the tie within noise wins over the recipe (ties go to the cheaper)
    cheap = row(2, "last-block", 1.0, 0.30, 400)
    tied = {**per_image, 2: scores(ten, [0.30, 0.36] * 5)}
    assert pick([own, cheap], tied)["number"] == 2
    # no per-image scores: only an equal top-1 keeps the recipe
    assert pick([own, sharper])["number"] == 4
    assert pick([dict(own, holdout_top1=0.9), sharper])["number"] == 13
    # the incumbent is confirmed with the best whenever its top-1 alone is in reach, although
    # its loss is far behind (so far that no other rule would make it a finalist)
    other = row(7, "gradual", 1.0, 0.5, 1000)
    per_image[7] = scores(ten, [0.5] * 10)
    assert [r["number"] for r in finalists([own, sharper, other], per_image)] == [13, 4]
    assert [r["number"] for r in finalists([dict(own, as_written=False), sharper, other], per_image)] == [13]
    # three images behind is within two standard errors (0.306): still confirmed; four is not
    assert [r["number"] for r in finalists([dict(own, holdout_top1=0.7), sharper], beaten)] == [13, 4]
    assert [r["number"] for r in finalists([dict(own, holdout_top1=0.6), sharper], four_behind)] == [13]


def test_a_poor_recipe_as_written_is_not_kept(tmp_path, data, pm):
    """The incumbent rule is no rubber stamp: ``full`` at the bottom of its range for 3 epochs
    learns next to nothing, and the search moves to a trial that beats it beyond noise."""
    from thawkit.plugins.search.report import challenger_margin

    recipe = recipe_for(data, tmp_path, strategy={"name": "full"}, optimizer={"name": "adamw", "lr": 1e-7})
    out = tmp_path / "s"
    result, lines = run_search(recipe, out, pm, trials=6, strategies="head-only,full", confirm=0)
    own = next(t for t in result["trials"] if t["as_written"])
    assert own["strategy"] == "full" and own["params"]["lr"] == pytest.approx(3e-5)  # clipped
    assert result["best"]["as_written"] is False
    best = next(t for t in result["trials"] if t["number"] == result["best"]["trial"])
    assert own["state"] == "complete", own  # scored, so the incumbent rule did apply

    def held(n):
        return json.loads((out / "trials" / f"{n:04d}" / "trial.json").read_text())["holdout"]
    # beaten on top-1 beyond the paired noise (or by a cheaper trial)
    assert challenger_margin(best, own, {n: held(n) for n in (own["number"], best["number"])}) > 0
    assert "(the recipe as written)" not in lines[-1]


# ------------------------------------------------- trials: scratch runs, per-image, first trials
def test_a_scratch_run_writes_no_weights_but_reports_per_image_and_still_stops_on_nan(tmp_path, data, pm):
    """A search's trial trains as a scratch run: no checkpoint, weights or plot (the trial keeps
    what it needs itself), the same events and metrics, per-image hold-out outputs, NaN guards."""
    import torch
    from thawkit import hookimpl
    from thawkit.plugins.train import DivergedError
    from thawkit.plugins.train.loop import Trainer
    from thawkit.plugins.train.session import prepare, torch_flags_restored

    seen = []

    class Spy:
        @hookimpl
        def thawkit_epoch_end(self, run, epoch, metrics):
            out = run.val_outputs
            seen.append((metrics, out.losses.clone(), out.correct.clone()))

    d = recipe_for(data, tmp_path, strategy={"name": "last-block", "blocks": 1})
    with torch_flags_restored():  # as train() does: leave torch's flags as they were
        session = prepare(load(d, pm), run_dir=tmp_path / "scratch")
        outcome = Trainer(session, log=lambda line: None, progress_bar=False, callbacks=[Spy()],
                          scratch=True).fit()
    assert outcome.status == "finished" and len(seen) == 3
    names = {p.name for p in (tmp_path / "scratch").iterdir()}
    assert not names & {"checkpoint.pt", "model.safetensors", "best.safetensors", "curves.png"}, names
    assert "metrics.jsonl" in names
    n_val = sum(1 for _ in (data / "val").rglob("*.png"))
    for metrics, losses, correct in seen:  # one entry per val image, the epoch's figures exactly
        assert losses.shape == (n_val,) and correct.shape == (n_val,)
        assert float(losses.mean()) == pytest.approx(metrics["val_loss"], rel=1e-5)
        assert float(correct.float().mean()) == pytest.approx(metrics["val_top1"])

    def poison(trainer):
        if trainer.state.epoch == 1 and trainer.state.step == 1:
            with torch.no_grad():
                trainer.s.model.fc.weight.fill_(float("nan"))
    with torch_flags_restored(), pytest.raises(DivergedError):
        session = prepare(load(d, pm), run_dir=tmp_path / "nan")
        Trainer(session, log=lambda line: None, progress_bar=False, on_step=poison, scratch=True).fit()


def test_trials_keep_their_hold_out_image_by_image(tmp_path, data, pm):
    result, _ = run_search(recipe_for(data, tmp_path), tmp_path / "s", pm, trials=6,
                           strategies="head-only,last-block")
    n_holdout = result["holdout"]["images"]
    for t in result["trials"]:
        if t["state"] != "complete":
            continue
        info = json.loads((tmp_path / "s" / "trials" / f"{t['number']:04d}" / "trial.json").read_text())
        held = info["holdout"]
        assert len(held["losses"]) == len(held["correct"]) == n_holdout
        assert sum(held["correct"]) / n_holdout == pytest.approx(t["holdout_top1"])
        assert sum(held["losses"]) / n_holdout == pytest.approx(t["holdout_loss"], abs=1e-5)
        assert [e["epoch"] for e in info["epochs"]] == [1, 2, 3]  # counted from 1, batch or not


def test_the_first_trials_are_the_recipe_then_every_candidate_once(tmp_path, data, pm):
    from thawkit.plugins.search.space import LR_RANGES

    recipe = recipe_for(data, tmp_path, strategy={"name": "last-block", "blocks": 2},
                        optimizer={"name": "adamw", "lr": 0.002, "layer_decay": 0.8})
    out = tmp_path / "s"
    result, _ = run_search(recipe, out, pm, trials=7, strategies="full,head-only,last-block,lp-ft")
    after_batch = result["trials"][4:]
    # the recipe as written first, with its own strategy parameters and layer decay
    assert after_batch[0]["strategy"] == "last-block"
    assert after_batch[0]["params"] == {"lr": 0.002, "blocks": 2, "layer_decay": 0.8}
    assert [t["as_written"] for t in result["trials"]] == [False] * 4 + [True] + [False] * 2
    # then every other candidate once, cheapest first, at the middle of its range, with its
    # strategy's own defaults and no layer decay (head-only ran as the batch of heads)
    lo, hi = LR_RANGES["lp-ft"]
    assert after_batch[1]["strategy"] == "last-block" and after_batch[1]["params"]["blocks"] == 1
    assert after_batch[2]["strategy"] == "lp-ft"
    assert after_batch[2]["params"] == {"lr": pytest.approx(math.sqrt(lo * hi)), "probe_epochs": 1,
                                        "backbone_lr_scale": 0.1, "layer_decay": 1.0}
    # a continued search takes the rest of the queue and does not queue them again
    more, _ = run_search(recipe, out, pm, trials=9, strategies="full,head-only,last-block,lp-ft")
    assert [t["strategy"] for t in more["trials"][7:9]] == ["full", more["trials"][8]["strategy"]]
    assert more["trials"][7]["params"]["lr"] == pytest.approx(math.sqrt(3e-5 * 1e-2))
    import optuna
    study = optuna.load_study(study_name="thawkit-search", storage=f"sqlite:///{out / 'study.db'}")
    assert not [t for t in study.get_trials(deepcopy=False) if t.state.name == "WAITING"]


def test_the_first_trials_start_before_any_time_is_kept_for_confirming(tmp_path, data, pm, monkeypatch):
    """Time kept for confirming the finalists never stops a first trial (every candidate once);
    the sampler's trials do respect it. Here the finalists would need more than the budget."""
    import thawkit.plugins.search.confirm as confirm

    monkeypatch.setattr(confirm, "reserve", lambda search: 1e6)
    result, _ = run_search(recipe_for(data, tmp_path), tmp_path / "s", pm, budget=600,
                           strategies="head-only,last-block,full", confirm=0)
    trials = result["trials"]
    started = [t for t in trials if not t["reason"].startswith("not started")]
    # the head-only batch, the recipe as written (head-only at 0.01), last-block and full once
    assert [t["strategy"] for t in started] == ["head-only"] * 5 + ["last-block", "full"]
    assert trials[:len(started)] == started            # then only trials that did not start
    left_out = trials[len(started):]
    assert len(left_out) == 3 and all("kept to confirm the finalists" in t["reason"] for t in left_out)


def test_folds_hold_out_the_next_images_of_each_class(tmp_path, data):
    from thawkit.plugins.search.holdout import carve

    def held(fold):
        _, holdout, n = carve(str(data / "train"), tmp_path / f"fold-{fold}", 0.2, 5, fold=fold)
        return n, {os.path.realpath(f) for f in holdout.rglob("*.png")}

    n0, first = held(0)
    n1, second = held(1)
    assert n0 == n1 == 6 and len(first) == len(second) == 6  # 10 per class: 2 per class each
    assert not first & second                                  # disjoint hold-outs
    for cls in ("cat", "dog", "eel"):
        assert sum(cls in f for f in second) == 2               # stratified as fold 0 is
    _, again = held(1)
    assert again == second                                     # seeded: the same fold again


def test_the_finalists_are_confirmed_on_more_folds_before_the_pick(tmp_path, data, pm):
    from thawkit.plugins.search.confirm import FINALISTS
    from thawkit.plugins.search.report import paired_noise, pick

    out = tmp_path / "s"
    result, lines = run_search(recipe_for(data, tmp_path), out, pm, trials=6,
                               strategies="head-only,last-block", confirm=2)
    c = result["confirm"]
    assert c["folds"] == 2 and 2 <= len(c["finalists"]) <= FINALISTS
    done = sorted((t for t in result["trials"] if t["state"] == "complete"),
                  key=lambda t: (-t["holdout_top1"], t["holdout_loss"]))
    assert c["finalists"][0] == done[0]["number"]             # the best on the first hold-out

    def held(n, key):
        info = json.loads((out / "trials" / f"{n:04d}" / "trial.json").read_text())
        return [float(v) for v in info["holdout"][key]]
    first = done[0]["number"]
    for t in done[1:]:  # the others: finalists exactly when within 2 paired standard errors
        n = t["number"]
        near = t["holdout_top1"] >= done[0]["holdout_top1"] - 2 * paired_noise(
            held(n, "correct"), held(first, "correct")) - 1e-12 and t["holdout_loss"] <= \
            done[0]["holdout_loss"] + 2 * paired_noise(held(n, "losses"), held(first, "losses")) + 1e-12
        if n in c["finalists"]:
            assert near
        elif len(c["finalists"]) < FINALISTS:
            assert not near
    rows, scores = [], {}
    for n in c["finalists"]:
        folder = out / "trials" / f"{n:04d}"
        assert c["scored"][str(n)] == [1, 2]
        first = json.loads((folder / "trial.json").read_text())["holdout"]
        losses, correct = list(first["losses"]), list(first["correct"])
        for fold in (1, 2):
            extra = json.loads((folder / f"fold-{fold}.json").read_text())["holdout"]
            assert len(extra["losses"]) == 6
            losses += extra["losses"]
            correct += extra["correct"]
        assert not (folder / "fold-1" / "trained.safetensors").exists()  # scores only, no weights
        pooled = c["pooled"][str(n)]
        assert pooled["images"] == 18
        assert pooled["holdout_top1"] == pytest.approx(sum(correct) / 18)
        row = next(dict(t) for t in result["trials"] if t["number"] == n)
        rows.append({**row, "holdout_top1": sum(correct) / 18, "holdout_loss": sum(losses) / 18})
        scores[n] = {"losses": losses, "correct": correct}
    assert result["best"]["trial"] == pick(rows, scores)["number"]  # the pick: on all 18 images
    picked = c["pooled"][str(result["best"]["trial"])]
    assert result["best"]["confirmed_top1"] == pytest.approx(picked["holdout_top1"])
    assert any(line.startswith("confirming trial") for line in lines)
    assert "scored again on 2 more hold-out fold(s)" in (out / "leaderboard.md").read_text()
    # continued, the search reuses the confirmation runs it has
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/fold-*.json")}
    again, lines = run_search(recipe_for(data, tmp_path), out, pm, trials=6,
                              strategies="head-only,last-block", confirm=2)
    assert {p: p.stat().st_mtime_ns for p in out.glob("trials/*/fold-*.json")} == stamps
    assert not any(line.startswith("confirming trial") for line in lines)
    assert again["best"]["trial"] == result["best"]["trial"]
