"""The search: an Optuna study over the candidate strategies, their learning rates, layer decay
and main parameters, picked on a hold-out carved from ``data.train``.

The study lives in ``DIR/study.db`` (or ``--storage URL``): a killed search continues with the
same command, ``--jobs N`` runs N worker processes against it (sharing one set of features,
:mod:`.shared`), and workers on several machines share one study through a database server
(``--storage postgresql://user:pw@host/db``; each machine computes its own features).
The study minimises the hold-out loss (cross-entropy: on a small hold-out it separates trials
that top-1 counts as ties); Optuna's Hyperband pruner stops weak trials from their per-epoch
hold-out loss.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError

from .shared import TRIAL_ATTR
from .space import AS_WRITTEN, BUILTINS, Candidate, candidates, check_variable, parse_strategies, trial_recipe

if TYPE_CHECKING:
    from thawkit import Recipe

STUDY_NAME = "thawkit-search"
BUDGET_FILE = "budget.json"
#: head-only learning rates trained at once, as several heads on one set of features
HEAD_BATCH = 4


def parse_budget(text: str | float | None) -> float | None:
    """Seconds from ``90s``, ``10m``, ``1h`` (or a number of seconds); None for no budget."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
        if m is None:
            raise ConfigError(f"--budget: {text!r} is not a duration; write 90s, 10m or 1h")
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if not seconds > 0 or math.isinf(seconds):
        raise ConfigError(f"--budget: {text!r} leaves no time; give a positive duration such as 90s")
    return seconds


@dataclass
class Settings:
    """One search's settings (what the command line gives)."""

    output: Path
    budget: float | None = None
    trials: int | None = None
    strategies: list[str] | None = None
    jobs: int = 1
    storage: str | None = None
    seed: int = 0
    holdout: float = 0.2
    log: Any = print
    confirm: int = 2

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.output / 'study.db').resolve()}"


def open_storage(url: str, *, wal: bool = False) -> Any:
    """Optuna's storage for ``url``, or a :class:`ConfigError` saying why it cannot be opened.
    ``wal``: a local SQLite file is switched to write-ahead logging first (persistent in the
    file; a commit no longer syncs the whole database, a third of the storage time per trial,
    and a killed process still loses nothing committed). A filesystem without WAL support keeps
    SQLite's default journal."""
    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        if wal and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            _write_ahead(url[len("sqlite:///"):])
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and drivers' errors vary
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"--storage: Optuna cannot open {url!r} ({type(exc).__name__}: {first}); "
                          "use sqlite:///path/study.db or postgresql://user:password@host/db") from None


def _write_ahead(path: str) -> None:
    import sqlite3

    try:
        db = sqlite3.connect(path, timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()
    except sqlite3.Error:
        pass  # e.g. a network filesystem: the default journal works there


def check(recipe: Recipe, settings: Settings) -> tuple[list[Candidate], dict[str, str]]:
    """Every check that needs no writing: budget, strategies, the recipe, the candidates."""
    if settings.budget is None and settings.trials is None:
        raise ConfigError("search: give --budget DURATION or --trials N")
    if settings.trials is not None and settings.trials < 1:
        raise ConfigError(f"--trials: at least 1, got {settings.trials}")
    if settings.jobs < 1:
        raise ConfigError(f"--jobs: at least 1, got {settings.jobs}")
    if settings.confirm < 0:
        raise ConfigError(f"--confirm: 0 or more hold-out folds, got {settings.confirm}")
    if not 0 < settings.holdout < 1:
        raise ConfigError(f"--holdout: a fraction of data.train between 0 and 1, got {settings.holdout}")
    check_variable(recipe)
    if not recipe.data.train or not recipe.data.val:
        raise ConfigError("search: the recipe needs data.train (the search carves its hold-out "
                          "from it) and data.val (where the pick is scored)")
    wanted = parse_strategies(settings.strategies, list(recipe.plugin_manager.strategies.entries))
    cands, skipped = candidates(recipe, wanted)
    if not cands:
        raise ConfigError("search: no candidate strategy can run on this model: " + "; ".join(
            f"{k}: {v}" for k, v in skipped.items()))
    return cands, skipped


class Search:
    """One process's view of a search: the study, the candidates and the shared features."""

    def __init__(self, recipe: Recipe, settings: Settings, cands: list[Candidate], *,
                 worker: int = 0, deadline: float | None = None):
        import optuna

        from .shared import FEATURES_DIR, SharedFeatures

        self.recipe, self.s, self.cands = recipe, settings, {c.name: c for c in cands}
        self.worker, self.deadline = worker, deadline
        self.base = json.loads((settings.output / "trial-base.json").read_text())
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=settings.seed + worker, n_startup_trials=5)
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=recipe.train.epochs)
        try:
            self.study = optuna.create_study(study_name=STUDY_NAME,
                                             storage=open_storage(settings.storage_url, wal=True),
                                             sampler=sampler, pruner=pruner, direction="minimize",
                                             load_if_exists=True)
        except ValueError as exc:  # a study an earlier thawkit made, maximising hold-out top-1
            raise ConfigError(f"search: the study in {settings.storage_url} was made by an earlier "
                              f"thawkit search and cannot be continued ({exc}); give another --output "
                              "(or --storage)") from None
        self._check_same_candidates()
        self.shared = SharedFeatures(settings.output / FEATURES_DIR, log=settings.log)
        self._scores: dict[int, Any] = {}  # a complete trial's hold-out scores never change

    def _check_same_candidates(self) -> None:
        """A study continues with the candidates it started with (Optuna's choices are fixed)."""
        for t in self.study.get_trials(deepcopy=False):
            dist = t.distributions.get("strategy")
            if dist is not None and list(dist.choices) != sorted(self.cands):
                raise ConfigError(f"search: the study in {self.s.storage_url} searches "
                                  f"{', '.join(dist.choices)}; continue it with those candidates "
                                  f"(--strategies {','.join(dist.choices)}), or give another --output")

    # ------------------------------------------------------------- counting
    def finished(self) -> list[Any]:
        return [t for t in self.study.get_trials(deepcopy=False)
                if t.state.name in ("COMPLETE", "PRUNED") or
                (t.state.name == "FAIL" and t.user_attrs.get("counts", False))]

    def remaining_trials(self) -> int | None:
        if self.s.trials is None:
            return None
        running = sum(1 for t in self.study.get_trials(deepcopy=False) if t.state.name == "RUNNING")
        return self.s.trials - len(self.finished()) - running

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.time()

    def estimate(self, strategy: str) -> float:
        """Seconds the next trial of ``strategy`` is expected to take (0 before any has run)."""
        done = [t for t in self.finished() if "seconds" in t.user_attrs]
        same = [t.user_attrs["seconds"] for t in done if t.params.get("strategy") == strategy]
        if same:
            return sum(same) / len(same)
        return max((t.user_attrs["seconds"] for t in done), default=0.0)

    # ------------------------------------------------------------- trials
    def first_trials(self) -> list[dict[str, Any]]:
        """Queue the search's first trials, before the sampler's own: the recipe as written (its
        strategy and learning rate, when the strategy is a candidate), then every other candidate
        once, cheapest first, at the middle of its learning-rate range with its strategy's own
        defaults. A small budget then covers every strategy before the sampler narrows in, and
        the user's own choice is always among the trials. Head-only is left to :meth:`head_batch`
        where that runs. Queued once per study: a continued search does not queue them again."""
        if any(t.params.get("strategy") not in (None, "head-only") or t.state.name == "WAITING"
               for t in self.study.get_trials(deepcopy=False)):
            return []
        recipe, batch = self.recipe, self.head_batch_applies()
        queued: list[dict[str, Any]] = []
        own = self.cands.get(recipe.strategy.name)
        if own is not None:
            queued.append(own.first_params(recipe.optimizer.lr, recipe.strategy.model_dump(),
                                           recipe.optimizer.layer_decay))
            self.study.set_user_attr(AS_WRITTEN, queued[0])  # the incumbent of the pick
        for name in BUILTINS + tuple(sorted(set(self.cands) - set(BUILTINS))):
            if name in self.cands and not (name == "head-only" and batch):
                params = self.cands[name].first_params()
                if params not in queued:
                    queued.append(params)
        for params in queued:
            self.study.enqueue_trial(params, skip_if_exists=True)
        return queued

    def run(self) -> None:
        """Start trials until the trial count or the budget says stop. A trial that would not
        fit in the budget left is not started (recorded with why); after 3 such in a row the
        search stops starting trials. Time is kept for confirming the finalists only once the
        first trials (:meth:`first_trials`) have all been asked for: trying every candidate once
        comes before confirming the best of too few."""
        from .confirm import reserve

        optuna = _optuna()
        misses = 0
        while True:
            remaining = self.remaining_trials()
            if remaining is not None and remaining <= 0:
                return
            left = self.left()
            if left is not None and left <= 0:
                return
            queued = bool(self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
            trial = self.study.ask()  # a queued first trial while there is one
            trial.set_user_attr("host", socket.gethostname())
            trial.set_user_attr("pid", os.getpid())
            strategy = trial.suggest_categorical("strategy", sorted(self.cands))
            changes = self.cands[strategy].suggest(trial)
            kept = 0.0 if left is None or queued else reserve(self)
            if left is not None and self.estimate(strategy) > left - kept:
                kept_text = f", {kept:.0f}s of them kept to confirm the finalists" if kept else ""
                trial.set_user_attr("reason", f"not started: a {strategy} trial takes about "
                                    f"{self.estimate(strategy):.0f}s, {left:.0f}s of the budget were "
                                    f"left{kept_text}")
                self.study.tell(trial, state=_optuna().trial.TrialState.FAIL)
                misses += 1
                if misses >= 3:
                    return
                continue
            misses = 0
            self._run_one(trial, strategy, changes)

    def _run_one(self, trial: Any, strategy: str, changes: dict[str, Any]) -> None:
        from .trial import Reporter, run_trial

        optuna = _optuna()
        number = trial.number
        self.say_start(number, strategy, changes)

        def report(epoch: int, value: float) -> bool:
            trial.report(value, epoch)
            return trial.should_prune()

        data = trial_recipe(self.base, changes)
        try:
            outcome = run_trial(data, self.trial_dir(number), shared=self.shared, reporter=Reporter(report),
                                pm=self.recipe.plugin_manager, scratch=self.s.output / "scratch")
        except KeyboardInterrupt:
            trial.set_user_attr("reason", "interrupted (Ctrl-C); the search continues with the same "
                                "command")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        trial.set_user_attr(TRIAL_ATTR, outcome.features)
        loss = outcome.epochs[-1]["holdout_loss"] if outcome.epochs else None
        self.record(trial, strategy, changes, outcome.state, outcome.holdout_top1, outcome.seconds,
                    outcome.trainable_params, outcome.reason, loss)

    def record(self, trial: Any, strategy: str, changes: dict[str, Any], state: str,
               holdout: float | None, seconds: float, trainable: int, reason: str,
               loss: float | None = None) -> None:
        optuna = _optuna()
        trial.set_user_attr("seconds", round(seconds, 3))
        if loss is not None and math.isfinite(loss):
            trial.set_user_attr("holdout_loss", loss)
        if holdout is not None:
            trial.set_user_attr("holdout_top1", holdout)
        trial.set_user_attr("trainable_params", trainable)
        trial.set_user_attr("changes", changes)
        trial.set_user_attr("counts", True)
        if reason:
            trial.set_user_attr("reason", reason[:500])
        if state == "complete" and loss is not None and math.isfinite(loss):
            self.study.tell(trial, loss)
        elif state == "pruned":
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self.say_end(trial.number, strategy, state, holdout, seconds, reason)

    def trial_dir(self, number: int) -> Path:
        return self.s.output / "trials" / f"{number:04d}"

    def holdout_scores(self, rows: list[dict[str, Any]]) -> dict[int, Any]:
        """``{number: {"losses": [...], "correct": [...]}}`` of the complete trials among
        ``rows``, from their ``trial.json``, each read once per process."""
        from .trial import read_per_image

        out = {}
        for r in rows:
            if r["state"] == "complete":
                n = r["number"]
                if n not in self._scores:
                    self._scores[n] = read_per_image(self.trial_dir(n))
                out[n] = self._scores[n]
        return out

    # ---------------------------------------------------- head-only batch
    def head_batch_applies(self) -> bool:
        return "head-only" in self.cands and not self.recipe.data.augment and \
            self.recipe.train.cache != "off"

    def head_batch(self) -> None:
        """Several head-only learning rates at once, as heads on one set of shared features
        (as ``thawkit probe`` does), when the recipe lets the features be cached."""
        import numpy as np

        optuna = _optuna()
        cand = self.cands.get("head-only")
        if cand is None or not self.head_batch_applies():
            return
        if any(t.params.get("strategy") == "head-only" and (t.state.name in ("COMPLETE", "PRUNED")
               or t.user_attrs.get("counts")) for t in self.study.get_trials(deepcopy=False)):
            return  # done by an earlier session of this search
        k = HEAD_BATCH if self.s.trials is None else min(HEAD_BATCH, self.s.trials)
        lrs = [float(v) for v in np.geomspace(*cand.lr_range, k)]
        trials = []
        for lr in lrs:
            self.study.enqueue_trial({"strategy": "head-only", "head-only.lr": lr})
        for _ in lrs:
            trial = self.study.ask()
            trial.suggest_categorical("strategy", sorted(self.cands))
            trials.append((trial, cand.suggest(trial)))
        self.s.log(f"trials {trials[0][0].number}-{trials[-1][0].number}: head-only at {k} learning "
                   f"rates ({', '.join(f'{lr:.2g}' for lr in lrs)}), trained at once on shared features")
        mark = self.shared.counts()
        try:
            results, seconds = self._probe([c for _, c in trials], [t.number for t, _ in trials])
        except KeyboardInterrupt:
            for trial, _ in trials:
                trial.set_user_attr("reason", "interrupted (Ctrl-C); the search continues with the "
                                    "same command")
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        trials[0][0].set_user_attr(TRIAL_ATTR, self.shared.since(mark))  # one build for the batch
        for (trial, changes), (result, trainable) in zip(trials, results):
            for row in result.epochs:
                if math.isfinite(row["val_loss"]):
                    trial.report(row["val_loss"], row["epoch"])
            top1 = result.final_top1
            state = "complete" if math.isfinite(result.epochs[-1]["val_loss"]) else "failed"
            self.record(trial, "head-only", changes, state, top1 if state == "complete" else None,
                        seconds / len(trials), trainable,
                        "" if state == "complete" else "the hold-out loss is not finite",
                        result.epochs[-1]["val_loss"])

    def _probe(self, changes: list[dict[str, Any]], numbers: list[int]) -> tuple[list[Any], float]:
        import tempfile

        from safetensors.torch import load_file
        from thawkit import validate_recipe
        from thawkit.plugins.train.probe import probe

        from .trial import _pipeline_class, fingerprint, per_image, save_trained, tensor_digests, write_trial

        started = time.perf_counter()
        scratch = self.s.output / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="probe-", dir=scratch)) / "run"
        data = trial_recipe(self.base, changes[0])
        recipe = validate_recipe(data, where="search", pm=self.recipe.plugin_manager)
        sessions = []

        def pipeline(session):
            sessions.append(session)
            return _pipeline_class()(session, self.shared)

        lrs = [c["optimizer"]["lr"] for c in changes]
        try:
            results = probe(recipe, lrs, run_dir=run_dir,
                            log=lambda line: None, pipeline=pipeline)
            heads = load_file(str(run_dir / "heads.safetensors"))
            start = tensor_digests(sessions[0].model.state_dict())
        finally:
            shutil.rmtree(run_dir.parent, ignore_errors=True)
        seconds = time.perf_counter() - started
        out = []
        for number, change, result, lr in zip(numbers, changes, results, lrs):
            prefix = f"lr={lr:g}/"
            mine = {k[len(prefix):]: v for k, v in heads.items() if k.startswith(prefix)}
            folder = self.trial_dir(number)
            folder.mkdir(parents=True, exist_ok=True)
            save_trained(folder, mine, None)
            trainable = sum(v.numel() for v in mine.values())
            write_trial(folder, trial_recipe(self.base, change), status="complete",
                        reason="", seconds=seconds / len(changes), trainable=trainable,
                        epochs=[{"epoch": r["epoch"], "holdout_top1": r["val_top1"],
                                 "holdout_loss": r["val_loss"], "train_loss": r["train_loss"]}
                                for r in result.epochs],
                        fingerprint=fingerprint(start, [n for n in start if n not in mine]),
                        unchanged=len(start) - len(mine), holdout=per_image(result.val_outputs))
            out.append((result, trainable))
        return out, seconds

    # ------------------------------------------------------------- progress
    def _budget_text(self) -> str:
        left = self.left()
        return "" if left is None else f", budget left {max(left, 0):.0f}s"

    def say_start(self, number: int, strategy: str, changes: dict[str, Any]) -> None:
        params = {**{k: v for k, v in changes["strategy"].items() if k != "name"}, **changes["optimizer"]}
        text = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())
        remaining = self.remaining_trials()
        more = "" if remaining is None else f", {remaining} to go after it"
        self.s.log(f"trial {number}: {strategy} ({text}){more}{self._budget_text()}")

    def say_end(self, number: int, strategy: str, state: str, holdout: float | None, seconds: float,
                reason: str) -> None:
        score = f"hold-out top-1 {100 * holdout:.2f}%" if holdout is not None else state
        why = f" ({reason.splitlines()[0][:160]})" if reason and state == "failed" else ""
        self.s.log(f"trial {number}: {strategy} {state}, {score}, {seconds:.1f}s{why}"
                   f"{self._budget_text()}")


def _optuna() -> Any:
    import optuna

    return optuna


def fail_dead_trials(study: Any) -> int:
    """Trials left ``running`` by a process of this machine that no longer exists (a killed
    search) are marked failed, so the search can go on; returns how many."""
    optuna = _optuna()
    host, count = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or pid is None or _alive(int(pid)):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "reason", "its process ended without "
                                           "finishing it (killed)")
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        count += 1
    return count


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_main(recipe_path: str, settings: Settings, cands: list[Candidate], worker: int,
                deadline: float | None) -> None:
    """A ``--jobs`` worker process: the same study and shared features, its own sampler seed."""
    from thawkit import load_recipe

    recipe = load_recipe(recipe_path)
    settings.log = lambda line: print(f"[worker {worker}] {line}", flush=True)
    search = Search(recipe, settings, cands, worker=worker, deadline=deadline)
    try:
        search.run()
    finally:
        search.shared.close()


