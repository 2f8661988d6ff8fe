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

Accuracy is compared as a mean over training seeds (``TRAIN_SEEDS``, the recipe's
``train.seed``): every grid configuration, the default recipe and every pick train once per
seed. On 50 training images two runs of one recipe differ by a point or more, and the best of
30 single runs is biased upward by that noise, so one run per side measures the luck of a seed
rather than the choice. The spread across seeds is reported beside the means. The grid's wall
time is one run per configuration (the first seed), the grid a user would run; the search's
is its own plus one ``--train`` run.

A "poor start" per task: the same search from the recipe with ``full`` at the bottom of its
learning-rate range (``POOR_LR``), which the pick keeps as its incumbent unless beaten, to show
that the search leaves a poor recipe. ``SEARCH_BENCH_KEEP=DIR`` writes each task's grid rows to
``DIR/TASK/grid.json``; ``SEARCH_BENCH_GRID=DIR`` reuses them instead of training the grid again
(its runs are deterministic; only the search's side then runs, with the grid's wall time as
measured when it ran).
"""
from __future__ import annotations

import json
import math
import os
import statistics
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


TRAIN_SEEDS = (0, 1, 2)
#: the learning rate of the "poor start": full's recipe at the bottom of its search range
POOR_LR = 3e-5


def _seeded(recipe: dict[str, Any], out: Path, pm: Any, seeds: tuple[int, ...]) -> dict[str, Any]:
    """``recipe`` trained once per training seed (``train.seed``) into ``out/seed-S``: the mean
    val top-1, each seed's, and the first seed's seconds (one run, as a user runs it)."""
    runs = [_train({**recipe, "train": {**recipe["train"], "seed": seed}}, out / f"seed-{seed}", pm)
            for seed in seeds]
    top1s = [top1 for _, top1 in runs]
    return {"val_top1": statistics.fmean(top1s), "val_top1_seeds": top1s,
            "sd": statistics.stdev(top1s) if len(top1s) > 1 else 0.0, "seconds": runs[0][0]}


def grid(recipe: dict[str, Any], out: Path, pm: Any,
         seeds: tuple[int, ...] = TRAIN_SEEDS) -> list[dict[str, Any]]:
    """Every configuration of :func:`configurations`, full epochs, once per training seed."""
    rows = []
    for strategy, lr in configurations(recipe, pm):
        name = f"{strategy['name']}{strategy.get('blocks', '')}-{lr:.1e}"
        varied = {**recipe, "strategy": strategy, "optimizer": {**recipe["optimizer"], "lr": lr}}
        rows.append({"strategy": strategy, "lr": lr, **_seeded(varied, out / name, pm, seeds)})
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
#: the learning rate of the "poor start": full's recipe at the bottom of its search range
POOR_LR = 3e-5


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
    seeds = TRAIN_SEEDS[:1] if quick else TRAIN_SEEDS
    default = _seeded(recipe, root / name / "default", pm, seeds)
    reuse = Path(os.environ.get("SEARCH_BENCH_GRID", "-")) / name / "grid.json"
    if quick:
        rows = []
    elif reuse.is_file():  # an earlier run's grid of this task (deterministic runs, same code)
        rows = json.loads(reuse.read_text())["rows"]
    else:
        rows = grid(recipe, root / name / "grid", pm, seeds)
    grid_seconds = sum(r["seconds"] for r in rows)
    picks = []
    for seed in SEEDS[:1] if quick else SEEDS:
        out = root / name / f"search-{seed}"
        started = time.perf_counter()
        result = search(thawkit.validate_recipe(recipe, where=name, pm=pm), output=out,
                        budget=2 * default["seconds"], seed=seed, log=lambda line: None)
        search_seconds = time.perf_counter() - started
        best = yaml.safe_load((out / "best.yaml").read_text())
        trained = _seeded(best, out / "best", pm, seeds)
        picks.append({"seed": seed, "pick": result["best"], "search_seconds": search_seconds,
                      "trials": len(result["trials"]), "trial_seconds": result["budget"]["in_trials"],
                      "train_seconds": trained["seconds"], "train_top1": trained["val_top1"],
                      "train_top1_seeds": trained["val_top1_seeds"], "train_sd": trained["sd"],
                      "separate_seconds": separate_runs(out, pm) if seed == SEEDS[0] else None})
    poor = []
    if not quick:  # the recipe as written at the bottom of full's range: does the search leave it?
        bad = {**recipe, "optimizer": {**recipe["optimizer"], "lr": POOR_LR}}
        own = _seeded(bad, root / name / "poor", pm, seeds)
        for seed in SEEDS:
            out = root / name / f"search-poor-{seed}"
            started = time.perf_counter()
            result = search(thawkit.validate_recipe(bad, where=name, pm=pm), output=out,
                            budget=2 * default["seconds"], seed=seed, log=lambda line: None)
            search_seconds = time.perf_counter() - started
            trained = _seeded(yaml.safe_load((out / "best.yaml").read_text()), out / "best", pm, seeds)
            poor.append({"seed": seed, "recipe_top1": own["val_top1"], "pick": result["best"],
                         "search_seconds": search_seconds, "train_top1": trained["val_top1"],
                         "train_top1_seeds": trained["val_top1_seeds"]})
    _keep(name, root / name)
    best_grid = max(rows, key=lambda r: r["val_top1"]) if rows else None
    best_single = max(rows, key=lambda r: r["val_top1_seeds"][0]) if rows else None
    return {"task": name, "train_seeds": list(seeds), "default_top1": default["val_top1"],
            "default_top1_seeds": default["val_top1_seeds"], "default_seconds": default["seconds"],
            "grid_runs": len(rows), "grid_seconds": grid_seconds, "grid_best": best_grid,
            "grid_best_first_seed": best_single,
            "grid_sd_median": statistics.median(r["sd"] for r in rows) if rows else None,
            "grid_reused": str(reuse) if rows and reuse.is_file() else None,
            "grid": rows, "picks": picks, "poor": poor}


TASKS = ("digits", "digits-inverted", "mnist-animals")


def _keep(name: str, folder: Path) -> None:
    """With ``SEARCH_BENCH_KEEP=DIR``: each search's ``search.json`` as ``DIR/TASK/SEARCH.json``."""
    import shutil

    keep = os.environ.get("SEARCH_BENCH_KEEP")
    if keep:
        (Path(keep) / name).mkdir(parents=True, exist_ok=True)
        for found in folder.glob("search-*/search.json"):
            shutil.copyfile(found, Path(keep) / name / f"{found.parent.name}.json")


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
                gap = f"{100 * (p['train_top1'] - best['val_top1']):+.2f} pt" if best else "-"
                out.append(row_class("7 search", f"{name} seed {p['seed']}: val top-1 (mean of "
                                     f"{len(r['train_seeds'])} training seeds), pick (trained as best.yaml) "
                                     f"vs grid best ({r['grid_runs']} configurations)", text, grid_text,
                                     gap, "within 1 pt"))
                wall = p["search_seconds"] + p["train_seconds"]
                out.append(row_class("7 search", f"{name} seed {p['seed']}: wall s, search ({p['trials']} "
                                     "trials) + its --train run vs grid", f"{wall:.0f}",
                                     f"{r['grid_seconds']:.0f}",
                                     f"{wall / r['grid_seconds']:.2f}x" if r["grid_seconds"] > 1 else "-",
                                     "<= 0.25x"))
            if best:
                single = r["grid_best_first_seed"]
                out.append(row_class("7 search", f"{name}: grid best on the first seed alone; median "
                                     "sd of a configuration across seeds",
                                     f"{_name(single['strategy'])} {100 * single['val_top1_seeds'][0]:.1f}%",
                                     f"sd {100 * r['grid_sd_median']:.1f} pt", "-", ""))
            out.append(row_class("7 search", f"{name}: default recipe (full) val top-1, s",
                                 f"{100 * r['default_top1']:.1f}%", f"{r['default_seconds']:.0f}", "-", ""))
            for poor in r["poor"] if best else []:
                pick = poor["pick"] or {}
                strategy = pick.get("recipe", {}).get("strategy", {"name": "-"})
                gap = f"{100 * (poor['train_top1'] - best['val_top1']):+.2f} pt"
                out.append(row_class("7 search", f"{name} seed {poor['seed']}, poor start (full at "
                                     f"{POOR_LR:g}: {100 * poor['recipe_top1']:.1f}%): pick vs grid best",
                                     f"{_name(strategy)} {100 * poor['train_top1']:.1f}%", grid_text,
                                     gap, ""))
            first = r["picks"][0]
            out.append(row_class("7 search", f"{name}: trial s, search vs same trials as thawkit train",
                                 f"{first['trial_seconds']:.0f}", f"{first['separate_seconds']:.0f}",
                                 f"{first['trial_seconds'] / max(first['separate_seconds'], 1e-9):.2f}x", ""))
            if not quick:  # the raw figures, for the README and the issue
                print(json.dumps({k: v for k, v in r.items() if k != "grid"}, default=str), flush=True)
                keep = os.environ.get("SEARCH_BENCH_KEEP")  # every row, for search_rules.py's grid.json
                if keep:
                    (Path(keep) / name).mkdir(parents=True, exist_ok=True)
                    (Path(keep) / name / "grid.json").write_text(json.dumps({"rows": r["grid"]}, indent=1))
    return out
