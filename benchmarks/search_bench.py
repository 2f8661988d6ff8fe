"""Group 7 of ``benchmarks/run.py``: ``thawkit search`` against an exhaustive grid.

Per task (``search_tasks.py``): the grid trains every candidate strategy at 3 learning rates
(the low end, the geometric middle and the high end of the search's range) for the recipe's
full epochs, each as its own ``thawkit train`` run, and scores each on ``data.val``; the search
runs with a budget of twice one default ``full`` run (the recipe as written). Reported: the
pick's val top-1 against the grid's best (goal: within 1 point), the search's wall time against
the grid's (goal: at most 1/4), the default recipe's val top-1, and the search's trial seconds
against the same trials run as separate ``thawkit train`` runs (what the shared features and
the batch of heads save). One seed, one thread; real figures only.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import search_tasks


def _train(recipe: dict[str, Any], out: Path, pm: Any, stop_after: int | None = None) -> tuple[float, float]:
    """Seconds and final val top-1 of one ``thawkit train`` run of ``recipe`` into ``out``
    (``stop_after``: its first epochs only, as a pruned trial ran)."""
    import thawkit
    from thawkit.plugins.train import summary, train

    recipe = {**recipe, "train": {**recipe["train"], "output": str(out)}}
    started = time.perf_counter()
    train(thawkit.validate_recipe(recipe, where="benchmark", pm=pm), pm=pm, log=lambda line: None,
          progress_bar=False, stop_after=stop_after)
    return time.perf_counter() - started, summary(out)["final_top1"]


def grid(recipe: dict[str, Any], out: Path, pm: Any) -> list[dict[str, Any]]:
    """Every candidate at 3 learning rates (last-block at every block count), full epochs."""
    import thawkit
    from thawkit.plugins.search.space import candidates

    cands, _ = candidates(thawkit.validate_recipe(recipe, where="benchmark", pm=pm), None)
    rows = []
    for c in cands:
        lo, hi = c.lr_range
        variants = [{"name": c.name, "blocks": b} for b in range(1, c.blocks + 1)] \
            if c.name == "last-block" else [{"name": c.name}]
        for strategy in variants:
            for lr in (lo, math.sqrt(lo * hi), hi):
                name = f"{strategy['name']}{strategy.get('blocks', '')}-{lr:.1e}"
                seconds, top1 = _train({**recipe, "strategy": strategy,
                                        "optimizer": {**recipe["optimizer"], "lr": lr}},
                                       out / name, pm)
                rows.append({"strategy": strategy, "lr": lr, "seconds": seconds, "val_top1": top1})
    return rows


def separate_runs(search_dir: Path, pm: Any) -> float:
    """Seconds of the search's trials run again, each as its own ``thawkit train`` run (its
    hold-out as data.val, pruned trials for the epochs they ran)."""
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for folder in sorted((search_dir / "trials").iterdir()):
            info = json.loads((folder / "trial.json").read_text())
            if info["status"] not in ("complete", "pruned"):
                continue
            stop = len(info["epochs"]) if info["status"] == "pruned" else None
            seconds, _ = _train(info["recipe"], Path(tmp) / folder.name, pm, stop_after=stop)
            total += seconds
    return total


def task(name: str, root: Path, *, quick: bool) -> dict[str, Any]:
    import thawkit
    import yaml
    from thawkit.plugins.search import search

    pm = thawkit.get_plugin_manager()
    path = search_tasks.prepare(name, root / name, pretrain_epochs=2 if quick else 8,
                                epochs=2 if quick else 15)
    recipe = yaml.safe_load(path.read_text())
    default_seconds, default_top1 = _train(recipe, root / name / "default", pm)
    started = time.perf_counter()
    rows = grid(recipe, root / name / "grid", pm) if not quick else []
    grid_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = search(thawkit.validate_recipe(recipe, where=name, pm=pm), output=root / name / "search",
                    budget=2 * default_seconds, log=lambda line: None)
    search_seconds = time.perf_counter() - started
    separate = separate_runs(root / name / "search", pm)
    best_grid = max(rows, key=lambda r: r["val_top1"]) if rows else None
    return {"task": name, "default_top1": default_top1, "default_seconds": default_seconds,
            "grid_runs": len(rows), "grid_seconds": grid_seconds,
            "grid_best": best_grid, "search_seconds": search_seconds,
            "search_trials": len(result["trials"]), "trial_seconds": result["budget"]["in_trials"],
            "separate_seconds": separate, "pick": result["best"]}


TASKS = ("digits", "digits-inverted", "mnist-animals")


def rows(quick: bool, row_class: Any, tasks: tuple[str, ...] = TASKS) -> list[Any]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in tasks[:1] if quick else tasks:
            try:
                r = task(name, Path(tmp), quick=quick)
            except SystemExit as exc:  # a task's data package is not installed
                out.append(row_class("7 search", f"{name}: not run", str(exc)[:60], "-", "-", ""))
                continue
            pick = r["pick"] or {}
            pick_top1 = pick.get("val_top1")
            best = r["grid_best"]
            pick_text = "-" if pick_top1 is None else f"{pick.get('strategy')} {100 * pick_top1:.1f}%"
            if best is not None:
                grid_text = f"{best['strategy']['name']} {100 * best['val_top1']:.1f}%"
                gap = f"{100 * (best['val_top1'] - pick_top1):+.1f} pt" if pick_top1 is not None else "-"
            else:
                grid_text, gap = "-", "-"
            out += [
                row_class("7 search", f"{name}: val top-1, pick vs grid best ({r['grid_runs']} runs)",
                          pick_text, grid_text, gap, "within 1 pt"),
                row_class("7 search", f"{name}: wall s, search ({r['search_trials']} trials) vs grid",
                          f"{r['search_seconds']:.0f}", f"{r['grid_seconds']:.0f}",
                          f"{r['search_seconds'] / r['grid_seconds']:.2f}x" if r["grid_seconds"] > 1 else "-",
                          "<= 0.25x"),
                row_class("7 search", f"{name}: default recipe (full) val top-1, s",
                          f"{100 * r['default_top1']:.1f}%", f"{r['default_seconds']:.0f}", "-", ""),
                row_class("7 search", f"{name}: trial s, search vs same trials as thawkit train",
                          f"{r['trial_seconds']:.0f}", f"{r['separate_seconds']:.0f}",
                          f"{r['trial_seconds'] / max(r['separate_seconds'], 1e-9):.2f}x",
                          ""),
            ]
    return out
