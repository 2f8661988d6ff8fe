"""Group 7 of ``benchmarks/run.py``: ``thawkit search`` against an exhaustive grid.

Per task (``search_tasks.py``): the grid trains every candidate strategy at 3 learning rates
(the low end, the geometric middle and the high end of the search's range) for the recipe's
full epochs, each as its own ``thawkit train`` run, and scores each on ``data.val``; the search
runs with a budget of twice one default ``full`` run (the recipe as written). Reported: the
pick's val top-1 against the grid's best (goal: within 1 point), the search's wall time against
the grid's (goal: at most 1/4), the default recipe's val top-1, and the search's trial seconds
against the same trials run as separate ``thawkit train`` runs (what the shared features and
the batch of heads save). The grid runs once; the search runs with 3 seeds (each carves its
own hold-out), and its pick is trained as ``--train`` trains it (``best.yaml``, the whole of
``data.train``) so that it is scored like the grid's runs. One thread; real figures only.
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


def configurations(recipe: dict[str, Any], pm: Any) -> list[tuple[dict[str, Any], float]]:
    """The grid's configurations: every candidate at 3 learning rates (the ends and the
    geometric middle of its range), last-block at every block count."""
    import thawkit
    from thawkit.plugins.search.space import candidates

    cands, _ = candidates(thawkit.validate_recipe(recipe, where="benchmark", pm=pm), None)
    out = []
    for c in cands:
        lo, hi = c.lr_range
        variants = [{"name": c.name, "blocks": b} for b in range(1, c.blocks + 1)] \
            if c.name == "last-block" else [{"name": c.name}]
        out += [(v, lr) for v in variants for lr in (lo, math.sqrt(lo * hi), hi)]
    return out


def grid(recipe: dict[str, Any], out: Path, pm: Any) -> list[dict[str, Any]]:
    """Every configuration of :func:`configurations`, full epochs."""
    rows = []
    for strategy, lr in configurations(recipe, pm):
        name = f"{strategy['name']}{strategy.get('blocks', '')}-{lr:.1e}"
        seconds, top1 = _train({**recipe, "strategy": strategy,
                                "optimizer": {**recipe["optimizer"], "lr": lr}}, out / name, pm)
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


SEEDS = (0, 1, 2)


def task(name: str, root: Path, *, quick: bool) -> dict[str, Any]:
    """The grid once, then per seed (the seed carves the hold-out and seeds the sampler) a search
    with a budget of twice one default run, and the pick trained as ``--train`` trains it: its
    ``best.yaml`` on the whole of ``data.train``, scored on ``data.val`` like every grid run."""
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
    picks = []
    for seed in SEEDS[:1] if quick else SEEDS:
        out = root / name / f"search-{seed}"
        started = time.perf_counter()
        result = search(thawkit.validate_recipe(recipe, where=name, pm=pm), output=out,
                        budget=2 * default_seconds, seed=seed, log=lambda line: None)
        search_seconds = time.perf_counter() - started
        best = yaml.safe_load((out / "best.yaml").read_text())
        train_seconds, train_top1 = _train(best, out / "best", pm)
        picks.append({"seed": seed, "pick": result["best"], "search_seconds": search_seconds,
                      "trials": len(result["trials"]), "trial_seconds": result["budget"]["in_trials"],
                      "train_seconds": train_seconds, "train_top1": train_top1,
                      "separate_seconds": separate_runs(out, pm) if seed == SEEDS[0] else None})
    best_grid = max(rows, key=lambda r: r["val_top1"]) if rows else None
    return {"task": name, "default_top1": default_top1, "default_seconds": default_seconds,
            "grid_runs": len(rows), "grid_seconds": grid_seconds, "grid_best": best_grid,
            "grid": rows, "picks": picks}


TASKS = ("digits", "digits-inverted", "mnist-animals")


def _name(strategy: dict[str, Any]) -> str:
    return strategy["name"] + (f" {strategy['blocks']}" if "blocks" in strategy else "")


def rows(quick: bool, row_class: Any, tasks: tuple[str, ...] = TASKS) -> list[Any]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in tasks[:1] if quick else tasks:
            try:
                r = task(name, Path(tmp), quick=quick)
            except SystemExit as exc:  # a task's data package is not installed
                out.append(row_class("7 search", f"{name}: not run", str(exc)[:60], "-", "-", ""))
                continue
            best = r["grid_best"]
            grid_text = f"{_name(best['strategy'])} {100 * best['val_top1']:.1f}%" if best else "-"
            for p in r["picks"]:
                pick = p["pick"] or {}
                strategy = pick.get("recipe", {}).get("strategy", {"name": "-"})
                text = (f"{_name(strategy)} {100 * p['train_top1']:.1f}% "
                        f"(trial {100 * pick.get('val_top1', 0):.1f}%)")
                gap = f"{100 * (p['train_top1'] - best['val_top1']):+.1f} pt" if best else "-"
                out.append(row_class("7 search", f"{name} seed {p['seed']}: val top-1, pick (trained as "
                                     f"best.yaml) vs grid best ({r['grid_runs']} runs)", text, grid_text,
                                     gap, "within 1 pt"))
                wall = p["search_seconds"] + p["train_seconds"]
                out.append(row_class("7 search", f"{name} seed {p['seed']}: wall s, search ({p['trials']} "
                                     "trials) + its --train run vs grid", f"{wall:.0f}",
                                     f"{r['grid_seconds']:.0f}",
                                     f"{wall / r['grid_seconds']:.2f}x" if r["grid_seconds"] > 1 else "-",
                                     "<= 0.25x"))
            out.append(row_class("7 search", f"{name}: default recipe (full) val top-1, s",
                                 f"{100 * r['default_top1']:.1f}%", f"{r['default_seconds']:.0f}", "-", ""))
            first = r["picks"][0]
            out.append(row_class("7 search", f"{name}: trial s, search vs same trials as thawkit train",
                                 f"{first['trial_seconds']:.0f}", f"{first['separate_seconds']:.0f}",
                                 f"{first['trial_seconds'] / max(first['separate_seconds'], 1e-9):.2f}x", ""))
            if not quick:  # the raw figures, for the README and the issue
                print(json.dumps({k: v for k, v in r.items() if k != "grid"}, default=str), flush=True)
    return out
