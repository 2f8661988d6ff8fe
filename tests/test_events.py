"""The training loop's events as hooks, ``train(callbacks=...)``, ``run.request_stop`` and the
loggers chosen by ``train.loggers`` (metrics.jsonl, TensorBoard, MLflow), read back from what
they wrote."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import thawkit
from thawkit.plugins.cli import main
from thawkit.plugins.train import Run, resume, train
from thawkit.plugins.train.checkpoint import load_checkpoint, read_jsonl

from test_train import load, make_data, recipe_dict, write_recipe


def quiet(_line: str) -> None:
    pass


class Recorder:
    """Records every event, with what the run showed at that moment."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    @thawkit.hookimpl
    def thawkit_run_start(self, run):
        self.events.append(("start", run.epochs_done, run.resumed, run.is_main))

    @thawkit.hookimpl
    def thawkit_phase_change(self, run, phase, epoch):
        self.events.append(("phase", phase, epoch, len(run.adapted.trainable)))

    @thawkit.hookimpl
    def thawkit_epoch_end(self, run, epoch, metrics):
        self.events.append(("epoch", epoch, dict(metrics)))

    @thawkit.hookimpl
    def thawkit_checkpoint_saved(self, run, path, epoch):
        self.events.append(("checkpoint", epoch, load_checkpoint(path.parent)["epoch"]))

    @thawkit.hookimpl
    def thawkit_run_end(self, run, status):
        self.events.append(("end", status, json.loads((run.run_dir / "run.json").read_text())))

    @thawkit.hookimpl
    def thawkit_run_failed(self, run, error):
        self.events.append(("failed", error))

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("events-data"))


@pytest.fixture(scope="module")
def gradual(data, tmp_path_factory):
    """A two-epoch gradual run (phase 1 thaws at epoch 2), every event recorded."""
    out = tmp_path_factory.mktemp("gradual") / "run"
    pm = thawkit.get_plugin_manager(entrypoints=False)
    recipe = load(recipe_dict(data, out, strategy={"name": "gradual", "every": 1}), pm)
    recorder = Recorder()
    outcome = train(recipe, log=quiet, callbacks=[recorder])
    return outcome, recorder, out, pm


# ------------------------------------------------------------------ one hook each
def test_thawkit_run_start(gradual):
    outcome, recorder, _, _ = gradual
    assert outcome.status == "finished"
    assert recorder.events[0] == ("start", 0, False, True)
    assert recorder.kinds() == ["start", "epoch", "checkpoint", "phase", "epoch", "checkpoint", "end"]


def test_thawkit_phase_change(gradual):
    _, recorder, out, _ = gradual
    [(_, phase, epoch, trainable)] = [e for e in recorder.events if e[0] == "phase"]
    plan = json.loads((out / "plan.json").read_text())
    assert (phase, epoch) == (1, 2)  # gradual, every 1: the second epoch is phase 1's first
    assert trainable > 0 and plan  # the hook sees the new trainable set already applied


def test_thawkit_epoch_end(gradual):
    """The metrics are the documented flat mapping, and metrics.jsonl (the jsonl logger) is
    written from them."""
    _, recorder, out, _ = gradual
    ends = [e for e in recorder.events if e[0] == "epoch"]
    assert [e[1] for e in ends] == [1, 2]  # epochs counted from 1
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]  # counted from 1, as the events
    for (_, _, metrics), row in zip(ends, rows):
        groups = {f"lr/{g}" for g in row["lrs"]}
        assert groups and set(metrics) == {"train_loss", "train_top1", "val_loss", "val_top1",
                                           "phase", "trainable_params", "seconds"} | groups
        assert all(isinstance(v, (int, float)) for v in metrics.values())
        assert {k: metrics[k] for k in ("train_loss", "val_loss", "val_top1", "seconds")} == \
            {k: row[k] for k in ("train_loss", "val_loss", "val_top1", "seconds")}
        assert (metrics["phase"], metrics["trainable_params"]) == (row["phase"], row["trainable_params"])
        assert {k[3:]: v for k, v in metrics.items() if k.startswith("lr/")} == row["lrs"]
    assert [m["phase"] for _, _, m in ends] == [0, 1]
    assert ends[1][2]["trainable_params"] > ends[0][2]["trainable_params"]


def test_thawkit_checkpoint_saved(gradual):
    _, recorder, _, _ = gradual
    saved = [e for e in recorder.events if e[0] == "checkpoint"]
    assert saved == [("checkpoint", 1, 1), ("checkpoint", 2, 2)]  # on disk when announced


def test_thawkit_run_end(gradual):
    _, recorder, _, pm = gradual
    _, status, run_json = recorder.events[-1]
    assert status == "finished" and run_json["status"] == "finished"  # written before the hook
    assert not [n for n, _ in pm.list_name_plugin() if n.startswith("callbacks[")]  # unregistered
    assert not [n for n, _ in pm.list_name_plugin() if " logger " in n]


class Exploding:
    @thawkit.hookimpl
    def thawkit_epoch_end(self, run, epoch, metrics):
        if epoch == 2:
            raise RuntimeError("the notifier's server is down")


def test_thawkit_run_failed(data, tmp_path, pm):
    """A plugin raising in an event: the error names it, run.json says failed, the others hear
    thawkit_run_failed, the callbacks are gone, and the run resumes to the same end."""
    out = tmp_path / "run"
    recipe = load(recipe_dict(data, out, train={"epochs": 3}), pm)
    recorder = Recorder()
    with pytest.raises(thawkit.PluginError, match=r"plugin 'callbacks\[1\] Exploding' failed in "
                                                  "thawkit_epoch_end: RuntimeError: the notifier"):
        train(recipe, log=quiet, callbacks=[recorder, Exploding()])
    # newest plugin first: Exploding raised before the recorder heard of epoch 2
    assert recorder.kinds() == ["start", "epoch", "checkpoint", "failed"]
    assert isinstance(recorder.events[-1][1], thawkit.PluginError)
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "failed" and "Exploding" in status["message"]
    assert [n for n, _ in pm.list_name_plugin() if n.startswith("callbacks[")] == []
    assert load_checkpoint(out)["epoch"] == 1  # the failed epoch was not saved
    again = Recorder()
    assert resume(out, pm=pm, log=quiet, callbacks=[again]).status == "finished"
    assert again.events[0] == ("start", 1, True, True)
    assert [e[1] for e in again.events if e[0] == "epoch"] == [2, 3]
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]  # no line twice


def test_a_failing_hook_in_run_failed_does_not_hide_the_error(data, tmp_path, pm):
    class AlsoBroken:
        @thawkit.hookimpl
        def thawkit_run_failed(self, run, error):
            raise ValueError("cannot report")

    lines = []
    recipe = load(recipe_dict(data, tmp_path / "run", train={"epochs": 2}), pm)
    with pytest.raises(thawkit.PluginError, match="Exploding"):
        train(recipe, log=lines.append, callbacks=[AlsoBroken(), Exploding()])
    assert any("AlsoBroken' failed in thawkit_run_failed: ValueError: cannot report" in line
               for line in lines), lines


# ------------------------------------------------------------- request_stop, callbacks
class EarlyStopping:
    """Stops when val_loss has not improved for ``patience`` epochs (here: at a fixed epoch)."""

    def __init__(self, at: int) -> None:
        self.at = at

    @thawkit.hookimpl
    def thawkit_epoch_end(self, run: Run, epoch, metrics):
        if epoch == self.at:
            run.request_stop(f"no better val_loss than {metrics['val_loss']:.3f}")


def test_request_stop_ends_the_run_cleanly_and_it_resumes(data, tmp_path, pm):
    out = tmp_path / "run"
    recipe = load(recipe_dict(data, out, train={"epochs": 4}), pm)
    recorder = Recorder()
    outcome = train(recipe, log=quiet, callbacks=[EarlyStopping(at=2), recorder])
    assert (outcome.status, outcome.epochs_done) == ("stopped", 2)
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "stopped" and "no better val_loss than" in status["message"]
    assert status["epochs_done"] == 2 and load_checkpoint(out)["epoch"] == 2
    assert recorder.events[-1][:2] == ("end", "stopped")
    assert not (out / "model.safetensors").exists() and (out / "best.safetensors").exists()
    # the same recipe, uninterrupted, and the stopped run resumed: bit-identical
    whole = tmp_path / "whole"
    train(load(recipe_dict(data, whole, train={"epochs": 4}), pm), log=quiet)
    assert resume(out, pm=pm, log=quiet).status == "finished"
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]
    assert (out / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()


def test_callbacks_are_checked_before_anything_is_written(data, tmp_path, pm):
    class Misspelt:
        @thawkit.hookimpl
        def thawkit_epoch_ends(self, run, epoch, metrics):
            pass

    out = tmp_path / "run"
    recipe = load(recipe_dict(data, out), pm)
    with pytest.raises(thawkit.ConfigError, match=r"callbacks\[0\] Misspelt: thawkit_epoch_ends is "
                                                  "not a thawkit hook; did you mean thawkit_epoch_end"):
        train(recipe, log=quiet, callbacks=[Misspelt()])
    recorder = Recorder()
    with pytest.raises(thawkit.ConfigError, match=r"callbacks\[1\] Recorder is already registered"):
        train(recipe, log=quiet, callbacks=[recorder, recorder])
    assert not out.exists()


# ------------------------------------------------------------------------ loggers
class CsvLogger:
    """A third-party logger: val_top1 per epoch in run_dir/top1.csv; ``fail_at`` raises."""

    def __init__(self, run, fail_at: int = 0):
        self.path, self.fail_at = run.run_dir / "top1.csv", fail_at

    @thawkit.hookimpl
    def thawkit_epoch_end(self, run, epoch, metrics):
        if epoch == self.fail_at:
            raise OSError("disk quota exceeded")
        with open(self.path, "a") as fh:
            fh.write(f"{epoch},{metrics['val_top1']}\n")


class CsvPlugin:
    @thawkit.hookimpl
    def thawkit_register_loggers(self, register):
        register("csv", CsvLogger)


def test_thawkit_register_loggers(data, tmp_path, pm):
    pm.register(CsvPlugin(), name="csv-plugin")
    assert {"jsonl", "tensorboard", "mlflow", "csv"} <= set(
        pm.registry("thawkit_register_loggers").names())
    out = tmp_path / "run"
    assert train(load(recipe_dict(data, out, train={"loggers": ["csv"]}), pm), log=quiet).status \
        == "finished"
    rows = read_jsonl(out / "metrics.jsonl")
    assert (out / "top1.csv").read_text() == "".join(f"{r['epoch']},{r['val_top1']}\n" for r in rows)
    assert [n for n, _ in pm.list_name_plugin() if "logger" in n] == []
    # a logger that raises: the error names it and its plugin; the run is failed, not lost
    bad = tmp_path / "bad"
    recipe = load(recipe_dict(data, bad, train={"loggers": [{"name": "csv", "fail_at": 2}]}), pm)
    with pytest.raises(thawkit.PluginError, match=r"plugin 'csv logger \(csv-plugin\)' failed in "
                                                  "thawkit_epoch_end: OSError: disk quota"):
        train(recipe, log=quiet)
    assert json.loads((bad / "run.json").read_text())["status"] == "failed"
    assert load_checkpoint(bad)["epoch"] == 1


@pytest.mark.parametrize("loggers, error", [
    (["tensorbord"], r"train\.loggers\.0: unknown logger 'tensorbord'; did you mean 'tensorboard'"),
    (["mlflow", "mlflow"], r"train\.loggers\.1: logger 'mlflow' is listed twice"),
    ([{"name": "mlflow", "experimnt": "x"}], r"train\.loggers\.0\.experimnt: unknown field; "
                                              "allowed fields: tracking_uri, experiment"),
    ([{"name": "tensorboard", "log_dir": 3}], r"train\.loggers\.0\.log_dir: Input should be"),
])
def test_bad_loggers_are_recipe_errors(data, tmp_path, pm, loggers, error):
    with pytest.raises(thawkit.ThawkitError, match=error):  # ConfigError, or UnknownNameError
        load(recipe_dict(data, tmp_path / "run", train={"loggers": loggers}), pm)


def test_a_missing_extra_is_exit_2_before_anything_is_written(data, tmp_path, capsys, monkeypatch):
    from thawkit.plugins.train import extras

    real = extras.available
    monkeypatch.setattr(extras, "available", lambda module: module != "mlflow" and real(module))
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(data, out, train={"loggers": ["mlflow"]}))
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "train.loggers.0: logger 'mlflow' needs mlflow, which is not installed; install " \
           "thawkit[mlflow] (pip install 'thawkit[mlflow]')" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["train", str(recipe), "--set", "train.loggers=[tensorbord]"]) == 2
    assert "did you mean 'tensorboard'" in capsys.readouterr().err and not out.exists()


@pytest.fixture(scope="module")
def logged(data, tmp_path_factory):
    """A three-epoch gradual run with TensorBoard and MLflow, stopped after one epoch and
    resumed."""
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra")
    pytest.importorskip("mlflow", reason="needs the mlflow extra")
    out = tmp_path_factory.mktemp("logged") / "run"
    pm = thawkit.get_plugin_manager(entrypoints=False)
    d = recipe_dict(data, out, strategy={"name": "gradual", "every": 1},
                    train={"epochs": 3, "loggers": ["tensorboard", {"name": "mlflow",
                                                                     "experiment": "digits"}]})
    assert train(load(d, pm), log=quiet, stop_after=1).status == "stopped"
    assert resume(out, pm=pm, log=quiet).status == "finished"
    return out


def test_tensorboard_logger_writes_every_metric_once(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = read_jsonl(logged / "metrics.jsonl")
    events = EventAccumulator(str(logged / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    groups = {f"lr/{g}" for g in rows[0]["lrs"]}
    assert tags == {"train_loss", "train_top1", "val_loss", "val_top1", "phase",
                    "trainable_params", "seconds"} | groups
    for tag in ("val_loss", "phase", "trainable_params", *groups):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3], tag  # the resumed run adds, never repeats
    assert [s.value for s in events.Scalars("val_loss")] == pytest.approx([r["val_loss"] for r in rows])
    assert [s.value for s in events.Scalars("trainable_params")] == [r["trainable_params"] for r in rows]
    assert [s.value for s in events.Scalars("phase")] == [0, 1, 2]


def test_mlflow_logger_records_params_metrics_and_artifacts(logged):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{logged.resolve() / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("digits")
    [run] = client.search_runs([experiment.experiment_id])  # the resumed run continued it
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.tags["thawkit.status"] == "finished"
    params = run.data.params
    assert (params["optimizer.lr"], params["strategy.name"], params["train.epochs"]) == \
        ("0.01", "gradual", "3")
    rows = read_jsonl(logged / "metrics.jsonl")
    history = client.get_metric_history(run.info.run_id, "val_top1")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], r["val_top1"]) for r in rows]
    lr = next(iter(rows[0]["lrs"]))
    assert [m.step for m in client.get_metric_history(run.info.run_id, f"lr/{lr}")] == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.jsonl", "run.json", "recipe.yaml", "tensorboard"} <= artifacts
    assert "mlflow" not in artifacts and "run.lock" not in artifacts
    local = Path(client.download_artifacts(run.info.run_id, "run.json"))
    assert json.loads(local.read_text())["status"] == "finished"


def test_tiny_zoo_hears_the_events_and_logs_with_its_logger(data, tmp_path):
    """The hook reference's examples (examples/tiny_zoo.py) in a real run."""
    pm = thawkit.get_plugin_manager(entrypoints=False)
    pm.load_local(str(Path(__file__).parent.parent / "examples" / "tiny_zoo.py"))
    out = tmp_path / "run"
    d = recipe_dict(data, out, backbone={"source": "tinyzoo", "name": "tiny16", "kwargs": {}},
                    strategy={"name": "gradual", "every": 1}, data={"image_size": 64},
                    train={"loggers": [{"name": "zoo-log", "every": 1}]})
    lines: list[str] = []
    assert train(load(d, pm), log=lines.append).status == "finished"
    said = [line for line in lines if line.startswith("tinyzoo: ")]
    assert said[0] == "tinyzoo: starting at epoch 1 of 2"
    assert said[1] == "tinyzoo: checkpoint.pt holds 1 epoch(s)"
    assert re.fullmatch(r"tinyzoo: epoch 2 starts phase 1, \d+ trainable tensors", said[2]), said
    assert said[3:] == ["tinyzoo: checkpoint.pt holds 2 epoch(s)", "tinyzoo: run finished after 2 epoch(s)"]
    rows = read_jsonl(out / "metrics.jsonl")
    assert (out / "zoo.log").read_text() == "".join(
        f"epoch {r['epoch']}: val top-1 {r['val_top1']:.3f}\n" for r in rows)
    # a logger without a Params model: its options are checked against its signature
    with pytest.raises(thawkit.ConfigError, match=r"train\.loggers\.0: logger 'zoo-log' does not "
                                                  r"take these options \(.*'evry'.*\); its options: every"):
        load({**d, "train": {**d["train"], "loggers": [{"name": "zoo-log", "evry": 2}]}}, pm)


def test_an_epoch_trained_again_after_a_failure(data, tmp_path, pm):
    """Exploding fails epoch 2 after the loggers logged it, before its checkpoint; the resumed
    run trains epoch 2 again. metrics.jsonl and TensorBoard keep the new epoch 2 only;
    MLflow's history keeps both values at step 2 (as docs/training.md says)."""
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra")
    pytest.importorskip("mlflow", reason="needs the mlflow extra")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    recipe = load(recipe_dict(data, out, train={"epochs": 3, "loggers": ["tensorboard", "mlflow"]}), pm)
    with pytest.raises(thawkit.PluginError, match="Exploding"):
        train(recipe, log=quiet, callbacks=[Exploding()])  # callbacks hear events after loggers
    assert resume(out, pm=pm, log=quiet).status == "finished"
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("val_loss")] == \
        [(r["epoch"], pytest.approx(r["val_loss"])) for r in rows]
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("thawkit").experiment_id])
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [1, 2, 2, 3]


def test_a_plugin_failing_at_run_end_names_itself_and_the_run_stays_finished(data, tmp_path, pm):
    class Uploader:
        @thawkit.hookimpl
        def thawkit_run_end(self, run, status):
            raise ConnectionError("no route to the results server")

    out = tmp_path / "run"
    recipe = load(recipe_dict(data, out, train={"epochs": 1}, schedule={"warmup_epochs": 0}), pm)
    with pytest.raises(thawkit.PluginError, match=r"plugin 'callbacks\[0\] Uploader' failed in "
                                                  "thawkit_run_end: ConnectionError"):
        train(recipe, log=quiet, callbacks=[Uploader()])
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert (out / "model.safetensors").is_file()
    assert [n for n, _ in pm.list_name_plugin() if n.startswith("callbacks[")] == []


class CtrlCInLastEpoch:
    """Sends this process a SIGINT at the end of the last epoch, and keeps what run_end saw."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    @thawkit.hookimpl
    def thawkit_epoch_end(self, run, epoch, metrics):
        import os
        import signal

        if epoch == run.epochs:
            os.kill(os.getpid(), signal.SIGINT)

    @thawkit.hookimpl
    def thawkit_run_end(self, run, status):
        self.seen.append(run.interrupt_requested)


def test_run_interrupt_requested_tells_a_plugin_of_a_ctrl_c_the_run_absorbed(data, tmp_path, pm):
    """A Ctrl-C in the last epoch lets the run finish (its work is done), and run.interrupt_requested
    tells a plugin that drives several runs (thawkit search) that the user asked to stop."""
    probe, calm = CtrlCInLastEpoch(), Recorder()
    recipe = load(recipe_dict(data, tmp_path / "run", train={"epochs": 2}), pm)
    assert train(recipe, log=quiet, callbacks=[probe]).status == "finished"
    assert probe.seen == [True]
    seen: list[bool] = []

    class Watch:
        @thawkit.hookimpl
        def thawkit_run_end(self, run, status):
            seen.append(run.interrupt_requested)

    recipe = load(recipe_dict(data, tmp_path / "calm", train={"epochs": 2}), pm)
    assert train(recipe, log=quiet, callbacks=[calm, Watch()]).status == "finished"
    assert seen == [False]
