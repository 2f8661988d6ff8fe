"""One truth in every output: epochs are counted from 1 on the console, in metrics.jsonl,
run.json, probe.json and the plan; top-5 only where it can be below 100%; the cache says why it
is off once, not before every epoch. Run directories written when files counted from 0 stay
readable and resume into the new numbering."""
from __future__ import annotations

import json
import re

import pytest
from test_train import load, make_data, recipe_dict

import thawkit

SIX = ("a", "b", "c", "d", "e", "f")


@pytest.fixture
def pm():
    return thawkit.get_plugin_manager(entrypoints=False)


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train(recipe, run, pm, **kw):
    from thawkit.plugins.train import train as train_run

    lines: list[str] = []
    outcome = train_run(recipe, run_dir=run, log=lines.append, progress_bar=False, **kw)
    return outcome, lines


def test_console_metrics_and_run_json_count_epochs_from_1(tmp_path, pm):
    data = make_data(tmp_path)
    d = recipe_dict(data, tmp_path / "run", strategy={"name": "gradual", "every": 1},
                    train={"epochs": 3})
    outcome, lines = train(load(d, pm), tmp_path / "run", pm)
    records = rows(tmp_path / "run")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    printed = [int(m[1]) for line in lines for m in [re.match(r"epoch (\d+)/3 ", line)] if m]
    assert printed == [1, 2, 3]
    best = max(records, key=lambda r: r["val_top1"])  # the first of equals, as the loop keeps it
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["best_epoch"] == best["epoch"] and status["best_top1"] == best["val_top1"]
    assert f"at epoch {best['epoch']};" in outcome.message
    # the plan counts the same way: phases start at epochs 1, 2, 3 (e1, e2, e3), and the cache
    # lines beside it say "epoch 1", not "epoch 0"
    plan = load(d, pm)
    adapted = thawkit.adapt_recipe(plan, meta=True)
    header = str(adapted.plan).splitlines()[1].split()
    assert header[3:6] == ["e1", "e2", "e3"]
    cache = json.loads((tmp_path / "run" / "plan.json").read_text())["cache"]
    assert [c["epochs"] for c in cache][0][0] == 1


def test_a_run_written_with_epochs_from_0_resumes_into_epochs_from_1(tmp_path, pm):
    from thawkit.plugins.train import resume
    from thawkit.plugins.train.checkpoint import read_metrics

    data = make_data(tmp_path)
    run = tmp_path / "old"
    d = recipe_dict(data, run, train={"epochs": 3})
    outcome, _ = train(load(d, pm), run, pm, stop_after=2)
    assert outcome.status == "stopped"
    # what the previous code wrote: metrics counted from 0, run.json's best_epoch from 0
    old = [{**r, "epoch": r["epoch"] - 1} for r in rows(run)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    status = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**status, "best_epoch": status["best_epoch"] - 1}))
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert resume(run, pm=pm, log=lambda line: None, progress_bar=False).status == "finished"
    records = rows(run)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    best = max(records, key=lambda r: r["val_top1"])
    assert json.loads((run / "run.json").read_text())["best_epoch"] == best["epoch"]


def test_probe_counts_epochs_from_1_and_reads_older_files(tmp_path, pm):
    from thawkit.plugins.train.probe import format_results, probe, read_probe
    from thawkit.plugins.train.rundir import RunDir

    data = make_data(tmp_path)
    d = recipe_dict(data, tmp_path / "probe", data={"augment": False}, train={"epochs": 2})
    lines: list[str] = []
    results = probe(load(d, pm), [0.01, 0.1], log=lines.append)
    saved = read_probe(tmp_path / "probe")
    raw = json.loads((tmp_path / "probe" / RunDir.PROBE).read_text())
    assert raw == saved
    for result, record in zip(results, saved["results"]):
        assert [e["epoch"] for e in record["epochs"]] == [1, 2]
        assert record["best_epoch"] == max(record["epochs"], key=lambda e: e["val_top1"])["epoch"]
        assert result.best["epoch"] == record["best_epoch"]
    assert [line.split()[1] for line in lines[1:3]] == ["1/2", "2/2"]
    assert f"({results[0].best['epoch']:>3})" in format_results(results)
    # a probe.json written when epochs counted from 0
    for record in raw["results"]:
        record["epochs"] = [{**e, "epoch": e["epoch"] - 1} for e in record["epochs"]]
        record["best_epoch"] -= 1
    (tmp_path / "probe" / RunDir.PROBE).write_text(json.dumps(raw))
    assert read_probe(tmp_path / "probe") == saved


@pytest.mark.parametrize("classes, shown", [(SIX[:5], False), (SIX, True)])
def test_top5_only_with_more_than_5_classes(tmp_path, pm, classes, shown):
    data = make_data(tmp_path, classes)
    d = recipe_dict(data, tmp_path / "run", train={"epochs": 1}, schedule={"warmup_epochs": 0})
    _, lines = train(load(d, pm), tmp_path / "run", pm)
    [record] = rows(tmp_path / "run")
    assert ("val_top5" in record) is shown
    assert any(" top5 " in line for line in lines) is shown
    if shown:
        assert 0 <= record["val_top5"] <= 1


def test_cache_off_for_the_same_reason_is_said_once(tmp_path, pm):
    """A gradual run with one epoch per phase (or with augmentation) has the cache off in every
    phase for the same reason: one line for all of them, not one before every epoch."""
    data = make_data(tmp_path)
    d = recipe_dict(data, tmp_path / "run", strategy={"name": "gradual", "every": 1},
                    data={"augment": False}, train={"epochs": 4})
    _, lines = train(load(d, pm), tmp_path / "run", pm)
    said = [x for line in lines for x in re.findall(r"cache off for epochs? [\d-]+: [^;]*", line)]
    assert len(said) == len(set(r.split(": ", 1)[1] for r in said)), lines
    assert said[0].startswith("cache off for epochs 1-"), lines
