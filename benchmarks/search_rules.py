"""How well a pick rule chooses, apart from how the search explores: every grid configuration
of a search-benchmark task trained on the search's own hold-out split, and each rule's choice
among all of them scored by that configuration's grid run on ``data.val``.

    python benchmarks/search_rules.py DIR [TASK ...]

``DIR/TASK`` must hold what ``benchmarks/search_tasks.py`` writes (``recipe.yaml``) and a
``grid.json`` with the grid's rows (``{"rows": [{"strategy", "lr", "val_top1"}, ...]}``, as
``search_bench.grid`` returns them). For seeds 0, 1 and 2 (each carves its own hold-out, as
``thawkit search --seed`` does) it trains every configuration on the hold-out split, keeps the
per-image hold-out results in ``DIR/TASK/rules-SEED.json`` (reused when present), and prints
the distance of each rule's choice to the grid's best: per seed on one hold-out, then with the
three hold-outs pooled (what the search's confirmation of its finalists does).

Rules: ``previous`` (the best top-1; every trial within one unpaired standard error of it is a
tie, given to the fewest trainable parameters) and ``current``
(:func:`thawkit.plugins.search.report.pick`). One thread; minutes per task.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

SEEDS = (0, 1, 2)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_bench import configurations  # noqa: E402


def scores(root: Path, seed: int, pm: Any) -> list[dict[str, Any]]:
    """Every configuration trained on seed ``seed``'s hold-out split: per-image results."""
    import thawkit
    import yaml
    from thawkit.plugins.search.holdout import carve
    from thawkit.plugins.train import train

    path = root / f"rules-{seed}.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    done = {json.dumps([r["strategy"], r["lr"]]) for r in rows}
    recipe = yaml.safe_load((root / "recipe.yaml").read_text())
    train_dir, holdout_dir, _ = carve(recipe["data"]["train"], root / f"split-{seed}", 0.2, seed)

    class Keep:
        outputs = None

        @thawkit.hookimpl
        def thawkit_epoch_end(self, run: Any, epoch: int, metrics: dict[str, Any]) -> None:
            self.outputs = run.val_outputs

    for strategy, lr in configurations(recipe, pm):
        if json.dumps([strategy, lr]) in done:
            continue
        out = root / f"rules-runs-{seed}" / f"{strategy['name']}{strategy.get('blocks', '')}-{lr:.1e}"
        shutil.rmtree(out, ignore_errors=True)
        data = {**recipe, "strategy": strategy, "optimizer": {**recipe["optimizer"], "lr": lr},
                "data": {**recipe["data"], "train": str(train_dir), "val": str(holdout_dir)},
                "train": {**recipe["train"], "output": str(out)}}
        keep = Keep()
        train(thawkit.validate_recipe(data, where="rules", pm=pm), log=lambda line: None,
              progress_bar=False, callbacks=[keep])
        ok = keep.outputs is not None and bool(keep.outputs.losses.isfinite().all())
        rows.append({"strategy": strategy, "lr": lr,
                     "losses": keep.outputs.losses.tolist() if ok else None,
                     "correct": keep.outputs.correct.tolist() if ok else None})
        path.write_text(json.dumps(rows))
        shutil.rmtree(out, ignore_errors=True)
    return rows


def trainable(recipe: dict[str, Any], strategy: dict[str, Any], pm: Any) -> int:
    import thawkit

    adapted = thawkit.adapt_recipe(thawkit.validate_recipe({**recipe, "strategy": strategy},
                                                          where="rules", pm=pm), meta=True)
    return sum(p.numel() for n, p in adapted.model.named_parameters() if n in adapted.ever_trainable)


def as_rows(runs: list[dict[str, Any]], sizes: dict[str, int]) -> tuple[list[dict[str, Any]], dict[int, Any]]:
    rows, per_image = [], {}
    for number, r in enumerate(runs):
        if r["losses"] is None:
            continue
        n = len(r["losses"])
        rows.append({"number": number, "strategy": r["strategy"]["name"], "state": "complete",
                     "holdout_top1": sum(r["correct"]) / n, "holdout_loss": sum(r["losses"]) / n,
                     "trainable_params": sizes[json.dumps(r["strategy"])], "config": r})
        per_image[number] = {"losses": r["losses"], "correct": r["correct"]}
    return rows, per_image


def previous(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows[0]["config"]["losses"])
    best = max(r["holdout_top1"] for r in rows)
    noise = math.sqrt(max(best * (1 - best), 0.25 / n) / n)
    close = [r for r in rows if r["holdout_top1"] >= best - noise - 1e-12]
    return min(close, key=lambda r: (r["trainable_params"], -r["holdout_top1"], r["holdout_loss"]))


def main(root: Path, tasks: list[str]) -> None:
    import thawkit
    import yaml
    from thawkit.plugins.search.report import pick

    pm = thawkit.get_plugin_manager()
    gaps: dict[str, list[float]] = {"previous": [], "current": [], "current, 3 pooled": []}
    for task in tasks:
        folder = root / task
        grid = json.loads((folder / "grid.json").read_text())
        val = {json.dumps([r["strategy"], r["lr"]]): r["val_top1"] for r in grid["rows"]}
        best = max(val.values())
        recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
        sizes = {json.dumps(s): trainable(recipe, s, pm) for s, _ in configurations(recipe, pm)}
        runs = {seed: scores(folder, seed, pm) for seed in SEEDS}

        def score(row: dict[str, Any], val: dict[str, float] = val) -> float:
            return val[json.dumps([row["config"]["strategy"], row["config"]["lr"]])]

        for seed, seed_runs in runs.items():
            rows, per_image = as_rows(seed_runs, sizes)
            for rule, chosen in (("previous", previous(rows)), ("current", pick(rows, per_image))):
                gaps[rule].append(best - score(chosen))
                print(f"{task} seed {seed} {rule}: {chosen['strategy']} {chosen['config']['lr']:.1e} "
                      f"{100 * score(chosen):.1f}% (grid best {100 * best:.1f}%)")
        pooled = [dict(r, losses=sum((runs[s][i]["losses"] or [math.nan] for s in SEEDS), []),
                       correct=sum((runs[s][i]["correct"] or [False] for s in SEEDS), []))
                  for i, r in enumerate(runs[SEEDS[0]])]
        rows, per_image = as_rows(pooled, sizes)
        rows = [r for r in rows if all(map(math.isfinite, r["config"]["losses"]))]
        chosen = pick(rows, {r["number"]: per_image[r["number"]] for r in rows})
        gaps["current, 3 pooled"].append(best - score(chosen))
        print(f"{task} pooled current: {chosen['strategy']} {chosen['config']['lr']:.1e} "
              f"{100 * score(chosen):.1f}% (grid best {100 * best:.1f}%)")
    for rule, values in gaps.items():
        if values:
            print(f"{rule}: mean distance to the grid's best {100 * sum(values) / len(values):.1f} points "
                  f"over {len(values)} case(s), within 1 point in {sum(v <= 0.01 for v in values)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or ["digits", "digits-inverted", "mnist-animals"])
