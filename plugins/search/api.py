"""``search(recipe, ...)``: the library entry point behind ``thawkit search``."""
from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine import BUDGET_FILE, Search, Settings, check, fail_dead_trials, open_storage, parse_budget

if TYPE_CHECKING:
    from thawkit import Recipe


def search(recipe: Recipe, *, output: str | Path, budget: str | float | None = None,
           trials: int | None = None, strategies: str | list[str] | None = None, jobs: int = 1,
           storage: str | None = None, seed: int = 0, holdout: float = 0.2, train: bool = False,
           confirm: int = 2, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Search strategies and learning rates for ``recipe`` into ``output``; returns what
    ``output/search.json`` holds (``best``, ``trials``, ``evidence``, ``budget``...).

    Example::

        recipe = thawkit.load_recipe("recipe.yaml")
        result = search(recipe, output="runs/search", budget="10m")
        print(result["best"]["strategy"], result["best"]["holdout_top1"])

    Run again with the same arguments to continue a search that was stopped or killed.
    """
    from . import confirm as confirming
    from .report import trial_rows, write_report

    settings = Settings(Path(output), parse_budget(budget), trials,
                        strategies, jobs, storage, seed, holdout, log, confirm)
    cands, skipped = check(recipe, settings)
    if storage is not None:
        open_storage(storage)  # before anything is written
    out = settings.output
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "scratch", ignore_errors=True)
    started = time.time()
    spent_before = _spent(out)
    base, n_holdout, num_classes = _prepare_data(recipe, settings)
    evidence = _evidence(recipe, settings, base, num_classes)
    deadline = None if settings.budget is None else started + settings.budget - spent_before
    for name, reason in skipped.items():
        log(f"skipped {name}: {reason}")
    if recipe.data.augment or recipe.train.cache == "off":
        log("no trial shares features: " + ("data.augment is true (set data.augment: false to "
                                            "share them)" if recipe.data.augment else "train.cache is off"))
    main = Search(recipe, settings, cands, deadline=deadline)
    killed = fail_dead_trials(main.study)
    if killed:
        log(f"{killed} trial(s) of an earlier, killed session marked failed; continuing the search")
    try:
        main.head_batch()
        main.first_trials()
        _save_spent(out, spent_before + time.time() - started)
        procs = _start_workers(settings, cands, deadline)
        try:
            if not procs:
                main.run()
        finally:
            for p in procs:
                p.join()
        confirmed = confirming.confirm(main, trial_rows(main), deadline)
        main.shared.remove()  # kept until now for a session that continues an interrupted search
    except KeyboardInterrupt:
        log(f"search interrupted; run the same command again to continue it ({out})")
        raise
    finally:
        main.shared.close()
        _save_spent(out, spent_before + time.time() - started)
    result = write_report(main, recipe, settings, evidence=evidence, skipped=skipped,
                          n_holdout=n_holdout, num_classes=num_classes,
                          seconds=spent_before + time.time() - started, confirmed=confirmed)
    if train:
        from thawkit import load_recipe
        from thawkit.plugins.train import train as train_run

        best_recipe = load_recipe(out / "best.yaml", pm=recipe.plugin_manager)
        log(f"training the pick into {best_recipe.train.output}")
        outcome = train_run(best_recipe, log=log)
        result["train"] = {"status": outcome.status, "run_dir": best_recipe.train.output,
                           "message": outcome.message}
    return result


def _spent(out: Path) -> float:
    path = out / BUDGET_FILE
    return float(json.loads(path.read_text())["spent"]) if path.is_file() else 0.0


def _save_spent(out: Path, seconds: float) -> None:
    (out / BUDGET_FILE).write_text(json.dumps({"spent": round(seconds, 3)}))


def _prepare_data(recipe: Recipe, settings: Settings) -> tuple[dict[str, Any], int, int]:
    from .holdout import carve

    out = settings.output
    train_dir, holdout_dir, n_holdout = carve(recipe.data.train, out / "data", settings.holdout,
                                              settings.seed)
    num_classes = sum(1 for p in train_dir.iterdir() if p.is_dir())
    base = recipe.model_dump(mode="json")
    base["data"] = {**base["data"], "train": str(train_dir.resolve()), "val": str(holdout_dir.resolve())}
    base["head"] = {**base["head"], "num_classes": num_classes}
    base["train"] = {**base["train"], "output": str((out / "scratch" / "run").resolve())}
    (out / "trial-base.json").write_text(json.dumps(base, indent=1))
    return base, n_holdout, num_classes


def _evidence(recipe: Recipe, settings: Settings, base: dict[str, Any], num_classes: int) -> dict[str, Any]:
    from .evidence import logme_by_boundary, rgn_by_block

    path = settings.output / "evidence.json"
    if path.is_file():
        return json.loads(path.read_text())
    started = time.perf_counter()
    log = settings.log
    evidence: dict[str, Any] = {}
    try:
        evidence["logme"] = logme_by_boundary(recipe, base["data"]["train"], num_classes,
                                              seed=settings.seed)
    except Exception as exc:  # noqa: BLE001 - evidence informs; it never stops the search
        evidence["logme_error"] = f"{type(exc).__name__}: {exc}"
    try:
        evidence["rgn"] = rgn_by_block(recipe, base["data"]["train"], num_classes, seed=settings.seed)
    except Exception as exc:  # noqa: BLE001
        evidence["rgn_error"] = f"{type(exc).__name__}: {exc}"
    evidence["seconds"] = round(time.perf_counter() - started, 3)
    for row in evidence.get("logme", []):
        log(f"LogME below {row['block']!r} ({row['strategy']}): "
            + (f"{row['logme']:.4f}" if row["logme"] is not None else row.get("reason", "")))
    if "rgn" in evidence:
        log("Auto-RGN relative gradient norms: " + ", ".join(f"{k} {v:.3f}"
                                                           for k, v in evidence["rgn"].items()))
    path.write_text(json.dumps(evidence, indent=1))
    return evidence


def _start_workers(settings: Settings, cands: list[Any], deadline: float | None) -> list[Any]:
    """``--jobs N`` (N > 1): N worker processes on the study; this process waits for them."""
    from .engine import worker_main

    if settings.jobs <= 1:
        return []
    ctx = multiprocessing.get_context("spawn")
    recipe_path = str(settings.output / "trial-base.json")
    plain = Settings(settings.output, settings.budget, settings.trials, settings.strategies, 1,
                     settings.storage, settings.seed, settings.holdout, None, settings.confirm)
    procs = [ctx.Process(target=worker_main, args=(recipe_path, plain, cands, w, deadline))
             for w in range(1, settings.jobs + 1)]
    for p in procs:
        p.start()
    return procs
