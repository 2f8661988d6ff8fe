"""The built-in loggers of ``thawkit train``: ``jsonl`` (always on), ``tensorboard`` and ``mlflow``.

A logger is an ordinary plugin object built for one run: registered by name through
``thawkit_register_loggers``, chosen in the recipe (``train.loggers: [tensorboard, mlflow]``),
given the run's events as hooks. Third-party loggers work the same way.

* ``jsonl``: ``metrics.jsonl``, one line per epoch (what ``thawkit`` itself reads back:
  plots, ``summary``, WiSE-FT); on by default, listed or not.
* ``tensorboard`` (``pip install 'thawkit[tensorboard]'``): every metric of
  ``thawkit_epoch_end`` as a scalar at step ``epoch``, under ``run_dir/tensorboard``
  (``log_dir``). A resumed run drops what an earlier start logged past its checkpoint.
* ``mlflow`` (``pip install 'thawkit[mlflow]'``): the recipe's fields as params (flattened,
  ``optimizer.lr``), the metrics per epoch, the run directory as artifacts when a run
  ends; by default to a SQLite store in ``run_dir/mlflow`` (``tracking_uri`` names another:
  ``sqlite:///mlflow.db``, a server's URL). A resumed run continues its MLflow run.
"""
from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from thawkit import ConfigError, format_validation_error, hookimpl

from .checkpoint import append_jsonl, truncate_metrics
from .rundir import disk_errors

if TYPE_CHECKING:
    from thawkit import Registry, ThawkitPluginManager

    from .events import Run
    from .sections import LoggerChoice, TrainSection

METRICS = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlflow"


def logger_registry(pm: ThawkitPluginManager) -> Registry:
    """Logger factories by name, from every plugin's ``thawkit_register_loggers``."""
    return pm.registry("thawkit_register_loggers", "logger")


def active_loggers(train: TrainSection) -> list[LoggerChoice]:
    """The loggers of a run: ``jsonl`` first (always), then those ``train.loggers`` names."""
    from .sections import LoggerChoice

    chosen = [LoggerChoice.of(item) for item in train.loggers]
    return [LoggerChoice(name="jsonl"), *(c for c in chosen if c.name != "jsonl")]


def check_loggers(items: Iterable[Any], pm: ThawkitPluginManager, where: str) -> None:
    """Every name registered, listed once, its options valid and its packages installed."""
    from .extras import available
    from .sections import LoggerChoice

    registry = logger_registry(pm)
    seen: set[str] = set()
    for index, item in enumerate(items):
        choice, field = LoggerChoice.of(item), f"train.loggers.{index}"
        factory = registry.get(choice.name, where=f"{where}: {field}")
        if choice.name in seen:
            raise ConfigError(f"{where}: {field}: logger {choice.name!r} is listed twice")
        seen.add(choice.name)
        params_model = getattr(factory, "Params", None)
        if params_model is not None:
            try:
                params_model.model_validate(choice.params)
            except ValidationError as exc:
                raise ConfigError(format_validation_error(
                    exc, where=where, prefix=("train", "loggers", index), model=params_model)) from None
        else:  # no model: the factory's own keyword arguments are its options
            signature = inspect.signature(factory)
            try:
                signature.bind(None, **choice.params)
            except TypeError as exc:
                options = ", ".join(list(signature.parameters)[1:]) or "none"
                raise ConfigError(f"{where}: {field}: logger {choice.name!r} does not take these "
                                  f"options ({exc}); its options: {options}") from None
        requires: dict[str, str] = getattr(factory, "requires", {})
        missing = [module for module in requires if not available(module)]
        if missing:
            raise ConfigError(
                f"{where}: {field}: logger {choice.name!r} needs {', '.join(missing)}, which "
                f"{'is' if len(missing) == 1 else 'are'} not installed; install "
                f"{' '.join(requires[m] for m in missing)} (pip install "
                f"{' '.join(repr(requires[m]) for m in missing)}), or leave it out of train.loggers")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ------------------------------------------------------------------------------- jsonl
class JsonlLogger:
    """``metrics.jsonl``: per epoch its number (from 0), phase and label, trainable parameters,
    each named group's lr, losses, accuracy and seconds."""

    def __init__(self, run: Run) -> None:
        self.path = run.run_dir / METRICS

    @hookimpl
    def thawkit_run_start(self, run: Run) -> None:
        if self.path.exists():  # lines past the checkpoint belong to epochs that run again
            truncate_metrics(self.path, run.epochs_done)

    @hookimpl(tryfirst=True)  # before other loggers: the run's own record comes first
    def thawkit_epoch_end(self, run: Run, epoch: int, metrics: dict[str, float]) -> None:
        phase = int(metrics["phase"])
        rest = {k: v for k, v in metrics.items()
                if not k.startswith("lr/") and k not in ("phase", "trainable_params", "seconds")}
        with disk_errors("write", self.path):  # a full disk is the run directory's error, not ours
            append_jsonl(self.path, {
                "epoch": epoch - 1, "phase": phase, "phase_label": run.adapted.phases[phase].label,
                "trainable_params": int(metrics["trainable_params"]),
                "lrs": {k[3:]: v for k, v in metrics.items() if k.startswith("lr/")},
                **rest, "seconds": metrics["seconds"]})


# ------------------------------------------------------------------------- tensorboard
class TensorBoardOptions(_Options):
    log_dir: str = Field(TENSORBOARD_DIR, description="Folder of the event files; a relative "
                         "one is inside the run directory.")


class TensorBoardLogger:
    """Each metric of an epoch as a TensorBoard scalar, at step ``epoch`` (from 1)."""

    Params = TensorBoardOptions
    requires = {"tensorboard": "thawkit[tensorboard]"}

    def __init__(self, run: Run, log_dir: str = TENSORBOARD_DIR) -> None:
        self.log_dir = run.run_dir / log_dir
        self.writer: Any = None

    @hookimpl
    def thawkit_run_start(self, run: Run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run starts a new event file; its purge step tells readers to drop what
        # an earlier start logged past the checkpoint (an epoch that is trained again)
        purge = run.epochs_done + 1 if run.resumed else None
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge)

    @hookimpl
    def thawkit_epoch_end(self, run: Run, epoch: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    @hookimpl
    def thawkit_run_end(self, run: Run, status: str) -> None:
        self.close()

    @hookimpl
    def thawkit_run_failed(self, run: Run, error: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# ------------------------------------------------------------------------------ mlflow
class MLflowOptions(_Options):
    tracking_uri: str | None = Field(None, description="Where MLflow records the run; default: a "
                                     "SQLite store in the run directory's mlflow folder.")
    experiment: str = Field("thawkit", min_length=1, description="MLflow experiment name.")
    run_name: str | None = Field(None, description="MLflow run name; default: the run "
                                 "directory's name.")
    artifacts: bool = Field(True, description="Log the run directory's files as artifacts when "
                            "the run ends.")


#: how a thawkit run's end reads in MLflow
_MLFLOW_STATUS = {"finished": "FINISHED", "stopped": "KILLED", "interrupted": "KILLED"}
#: the tag that ties an MLflow run to its run directory (a resumed run finds it again)
RUN_DIR_TAG = "thawkit.run_dir"


class MLflowLogger:
    """The recipe as params, the metrics per epoch, the run directory as artifacts."""

    Params = MLflowOptions
    requires = {"mlflow": "thawkit[mlflow]"}

    def __init__(self, run: Run, tracking_uri: str | None = None, experiment: str = "thawkit",
                 run_name: str | None = None, artifacts: bool = True) -> None:
        store = run.run_dir.resolve() / MLFLOW_DIR
        self.store = store if tracking_uri is None else None
        self.tracking_uri = tracking_uri or f"sqlite:///{store / 'mlflow.db'}"
        self.experiment, self.run_name, self.artifacts = experiment, run_name, artifacts
        self.client: Any = None
        self.run_id: str | None = None

    @hookimpl
    def thawkit_run_start(self, run: Run) -> None:
        from mlflow.tracking import MlflowClient

        if self.store is not None:
            self.store.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(
            self.experiment, artifact_location=None if self.store is None
            else (self.store / "artifacts").as_uri())
        run_dir = str(run.run_dir.resolve())
        self.run_id = self._earlier_run(experiment_id, run_dir) if run.resumed else None
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        self.run_id = self.client.create_run(
            experiment_id, run_name=self.run_name or run.run_dir.name,
            tags={RUN_DIR_TAG: run_dir}).info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flatten(run.recipe.model_dump(mode="json")).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def _earlier_run(self, experiment_id: str, run_dir: str) -> str | None:
        quote = "'" if "'" not in run_dir else '"' if '"' not in run_dir else None
        if quote is None:
            return None
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = {quote}{run_dir}{quote}",
            max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    @hookimpl
    def thawkit_epoch_end(self, run: Run, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, epoch)
                                                    for k, v in metrics.items()])

    @hookimpl
    def thawkit_run_end(self, run: Run, status: str) -> None:
        if self.artifacts:
            for path in sorted(run.run_dir.iterdir()):
                if path.name in (MLFLOW_DIR, "run.lock"):  # the store itself, and the lock
                    continue
                if path.is_dir():
                    self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
                else:
                    self.client.log_artifact(self.run_id, str(path))
        self.client.set_tag(self.run_id, "thawkit.status", status)
        if run.stop_reason:
            self.client.set_tag(self.run_id, "thawkit.stop_reason", run.stop_reason)
        self.client.set_terminated(self.run_id, _MLFLOW_STATUS.get(status, "FINISHED"))

    @hookimpl
    def thawkit_run_failed(self, run: Run, error: BaseException) -> None:
        if self.client is None or self.run_id is None:
            return
        self.client.set_tag(self.run_id, "thawkit.status", "failed")
        self.client.set_tag(self.run_id, "thawkit.error", f"{type(error).__name__}: {error}"[:5000])
        self.client.set_terminated(self.run_id, "FAILED")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optimizer": {"lr": 0.01}}`` -> ``{"optimizer.lr": "0.01"}``; lists as JSON."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[name] = text[:6000]  # MLflow's limit for a param's value
    return out


def register_builtin_loggers(register: Callable[..., None]) -> None:
    register("jsonl", JsonlLogger)
    register("tensorboard", TensorBoardLogger)
    register("mlflow", MLflowLogger)
