"""What a search writes: ``search.json``, ``leaderboard.md``, ``search.png`` and ``best.yaml``,
and the honest pick: the best hold-out top-1 (the loss breaking ties), ties within noise going to
the cheaper trial, and the recipe as written kept unless a trial beats its top-1 beyond noise."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .shared import cache_figures
from .space import AS_WRITTEN, BUILTINS, trial_recipe

if TYPE_CHECKING:
    from thawkit import Recipe

    from .engine import Search, Settings


def trial_rows(search: Search) -> list[dict[str, Any]]:
    """One row per trial of the study, in trial order."""
    rows = []
    written = search.study.user_attrs.get(AS_WRITTEN)
    for t in search.study.get_trials(deepcopy=False):
        if t.state.name == "WAITING":  # queued, never started (a later session starts it)
            continue
        state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed",
                 "RUNNING": "running", "WAITING": "waiting"}[t.state.name]
        changes = t.user_attrs.get("changes")
        rows.append({"number": t.number, "strategy": t.params.get("strategy"),
                     "params": {k.split(".", 1)[1]: v for k, v in t.params.items() if "." in k},
                     "state": state,
                     "holdout_top1": t.user_attrs.get("holdout_top1") if state == "complete" else None,
                     "holdout_loss": t.value if state == "complete" else t.user_attrs.get("holdout_loss"),
                     "seconds": t.user_attrs.get("seconds"),
                     "trainable_params": t.user_attrs.get("trainable_params"),
                     "reason": t.user_attrs.get("reason", ""), "changes": changes,
                     "as_written": written is not None and same_params(t.params, written)})
    return rows


def same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two trials' Optuna parameters are the same (floats to storage precision)."""
    if a.keys() != b.keys():
        return False
    return all(math.isclose(v, b[k], rel_tol=1e-12) if isinstance(v, float) and isinstance(b[k], (int, float))
               else v == b[k] for k, v in a.items())


def per_image_hits(per_image: dict[int, dict[str, Any]] | None) -> dict[int, list[float]]:
    """``{trial number: [1.0 or 0.0 per hold-out image]}`` from per-image scores, for
    :func:`paired_noise` on top-1 (trials without ``correct`` left out)."""
    return {n: [float(c) for c in v["correct"]] for n, v in (per_image or {}).items()
            if v and "correct" in v}


def paired_noise(a: list[float] | None, b: list[float] | None) -> float:
    """One standard error of the difference between two trials' mean hold-out losses, image by
    image on the same hold-out (a paired comparison: the images both get right or wrong cancel
    out); 0 when either trial's per-image losses are missing or the hold-out has one image."""
    if not a or not b or len(a) != len(b) or len(a) < 2:
        return 0.0
    diffs = [x - y for x, y in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))


def scored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The complete trials with a hold-out top-1 and a finite hold-out loss."""
    return [r for r in rows if r["state"] == "complete" and r.get("holdout_top1") is not None
            and r.get("holdout_loss") is not None and math.isfinite(r["holdout_loss"])]


def rank_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """Best first: the higher hold-out top-1, the lower loss, the cheaper strategy, the earlier."""
    order = {name: i for i, name in enumerate(BUILTINS)}
    return (-row["holdout_top1"], row["holdout_loss"], order.get(row["strategy"], len(order)),
            row["number"])


#: how many paired standard errors of the hits a trial's top-1 must lead the recipe as written by
#: to replace it: with one, a trial no better than the recipe replaced it about one time in six
#: (on the benchmark's animals, 0.06 ahead on 80 hold-out images, the same on data.val)
INCUMBENT_SE = 2.0


def pick(rows: list[dict[str, Any]],
         per_image: dict[int, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The complete trial with the best hold-out top-1, the lower hold-out loss breaking ties
    (top-1 on a small hold-out ties often; the loss is finer). A trial with the same top-1 whose
    loss is within one paired standard error of the best's (image by image on the same hold-out:
    a tie within noise) competes with it, and the one with the fewest trainable parameters wins;
    then the lower loss, the cheaper strategy, the earlier trial.

    Then the recipe as written (rows with ``as_written``) is the incumbent: it stays the pick
    unless that winner has fewer trainable parameters or a hold-out top-1 ahead of it by more than
    two paired standard errors of the per-image hits (:data:`INCUMBENT_SE`). A lower loss alone
    never displaces it: once both get the hold-out right, the loss mostly measures confidence,
    which a higher learning rate buys without accuracy (see :func:`challenger_margin`). ``per_image``:
    ``{trial number: {"losses": [...], "correct": [...]}}`` (without it, only equal losses and
    equal top-1 tie)."""
    done = scored(rows)
    if not done:
        return None
    best = min(done, key=rank_key)
    losses = {n: v.get("losses") for n, v in (per_image or {}).items() if v}
    ref = losses.get(best["number"])
    close = [r for r in done if r["holdout_top1"] >= best["holdout_top1"] - 1e-12 and
             r["holdout_loss"] <= best["holdout_loss"] + paired_noise(losses.get(r["number"]), ref) + 1e-12]
    winner = min(close, key=lambda r: (r["trainable_params"] or 0, *rank_key(r)[1:]))
    own = incumbent(done)
    if own is None or own is winner or challenger_margin(winner, own, per_image) > 0:
        return winner
    return own


def incumbent(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The scored trial of the recipe as written (the best-ranked, should there be several)."""
    written = [r for r in scored(rows) if r.get("as_written")]
    return min(written, key=rank_key) if written else None


def challenger_margin(challenger: dict[str, Any], own: dict[str, Any],
                      per_image: dict[int, dict[str, Any]] | None) -> float:
    """How far ``challenger`` is ahead of the recipe as written, ``own``, on the pick's terms:
    positive when it displaces it (fewer trainable parameters, or a hold-out top-1 ahead by more
    than :data:`INCUMBENT_SE` paired standard errors of the per-image hits), else 0 or less."""
    if (challenger["trainable_params"] or 0) < (own["trainable_params"] or 0):
        return 1.0
    hits = per_image_hits(per_image)
    noise = INCUMBENT_SE * paired_noise(hits.get(challenger["number"]), hits.get(own["number"]))
    return challenger["holdout_top1"] - own["holdout_top1"] - noise - 1e-12


def write_report(search: Search, recipe: Recipe, settings: Settings, *, evidence: dict[str, Any],
                 skipped: dict[str, str], n_holdout: int, num_classes: int,
                 seconds: float, confirmed: dict[str, Any] | None = None) -> dict[str, Any]:
    from .trial import evaluate_folder, restore_trial

    out = settings.output
    rows = trial_rows(search)
    pm = recipe.plugin_manager
    original = recipe.model_dump(mode="json")
    per_strategy: dict[str, dict[str, Any]] = {}
    per_image = search.holdout_scores(rows)
    for name in sorted({r["strategy"] for r in rows if r["strategy"]}):
        chosen = pick([r for r in rows if r["strategy"] == name], per_image)
        if chosen is not None:
            per_strategy[name] = chosen
    final_rows, final_scores = pooled(search, rows, per_image, confirmed or {})
    best = pick(final_rows, final_scores) if final_rows else pick(rows, per_image)
    if best is not None:  # the pick stands for its strategy in the leaderboard
        per_strategy[best["strategy"]] = next(dict(r) for r in rows if r["number"] == best["number"])
    for row in per_strategy.values():  # scored on data.val after the choice, never for it
        folder = search.trial_dir(row["number"])
        model = restore_trial(folder, pm, num_classes)
        row["val_top1"] = evaluate_folder(model, original, recipe.data.val, pm)
    if confirmed is not None:
        confirmed = {**confirmed, "pooled": {str(r["number"]): {
            "strategy": r["strategy"], "holdout_top1": r["holdout_top1"], "holdout_loss": r["holdout_loss"],
            "images": len(final_scores[r["number"]]["losses"])} for r in final_rows}}
    result: dict[str, Any] = {
        "recipe": original, "seed": settings.seed,
        "budget": {"seconds": settings.budget, "trials": settings.trials, "spent": round(seconds, 3),
                   "in_trials": round(sum(r["seconds"] or 0 for r in rows), 3),
                   "evidence": evidence.get("seconds"),
                   "not_started": [r["reason"] for r in rows if r["reason"].startswith("not started")]},
        "holdout": {"fraction": settings.holdout, "images": n_holdout},
        "evidence": evidence, "skipped": skipped,
        "caches": cache_figures(search.study),
        "confirm": confirmed,
        "trials": [{k: v for k, v in r.items() if k != "changes"} for r in rows],
        "best": None}
    kept_over = None
    if best is not None and best.get("as_written"):  # the trial it was kept over, if any
        leader = min(scored(final_rows or rows), key=rank_key)
        kept_over = None if leader["number"] == best["number"] else leader
    if best is not None:
        best_recipe = trial_recipe(original, best["changes"])
        best_recipe["train"] = {**best_recipe["train"], "output": str((out / "best").resolve())}
        first = next(r for r in rows if r["number"] == best["number"])  # its first hold-out's score
        result["best"] = {"trial": best["number"], "strategy": best["strategy"], "params": best["params"],
                          "holdout_top1": first["holdout_top1"],
                          "confirmed_top1": best["holdout_top1"] if final_rows else None,
                          "val_top1": per_strategy[best["strategy"]]["val_top1"],
                          "as_written": bool(best.get("as_written")),
                          "kept_over": None if kept_over is None else {
                              "trial": kept_over["number"], "holdout_top1": kept_over["holdout_top1"],
                              "holdout_loss": kept_over["holdout_loss"]},
                          "recipe": best_recipe}
        _write_yaml(out / "best.yaml", best_recipe)
    (out / "search.json").write_text(json.dumps(result, indent=1))
    (out / "leaderboard.md").write_text(leaderboard(rows, per_strategy, best, skipped, result))
    _plot(rows, out / "search.png")
    log = settings.log
    log((out / "leaderboard.md").read_text().rstrip())
    if best is not None:
        b = result["best"]
        more = f" ({100 * b['confirmed_top1']:.2f}% over its confirmation folds)" \
            if b["confirmed_top1"] is not None else ""
        log(f"pick: trial {best['number']}, {best['strategy']}"
            f"{' (the recipe as written)' if b['as_written'] else ''}; hold-out top-1 "
            f"{100 * b['holdout_top1']:.2f}%{more}, data.val top-1 {100 * b['val_top1']:.2f}%; "
            f"recipe in {out / 'best.yaml'}")
    return result


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))


def leaderboard(rows: list[dict[str, Any]], per_strategy: dict[str, dict[str, Any]],
                best: dict[str, Any] | None, skipped: dict[str, str], result: dict[str, Any]) -> str:
    rows = [r for r in rows if not r["reason"].startswith("not started")]  # said below
    lines = ["| strategy | trials | best lr | other params | hold-out top-1 | val top-1 | "
             "trainable params | seconds |", "|---|---|---|---|---|---|---|---|"]
    order = {name: i for i, name in enumerate(BUILTINS)}
    for name, r in sorted(per_strategy.items(), key=lambda kv: order.get(kv[0], len(order))):
        n = sum(1 for x in rows if x["strategy"] == name)
        other = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in r["params"].items() if k != "lr") or "-"
        mark = " (pick)" if best is not None and r["number"] == best["number"] else ""
        lines.append(f"| {name}{mark} | {n} | {r['params']['lr']:.3g} | {other} | "
                     f"{100 * r['holdout_top1']:.2f}% | {100 * r['val_top1']:.2f}% | "
                     f"{r['trainable_params']:,} | {r['seconds']:.1f} |")
    for name in sorted({x["strategy"] for x in rows if x["strategy"]} - set(per_strategy)):
        states = sorted({x["state"] for x in rows if x["strategy"] == name})
        lines.append(f"| {name} | {sum(1 for x in rows if x['strategy'] == name)} | - | - | "
                     f"no complete trial ({', '.join(states)}) | - | - | - |")
    b = result["budget"]
    counts = {s: sum(1 for r in rows if r["state"] == s) for s in ("complete", "pruned", "failed")}
    lines += ["", f"{len(rows)} trials: {counts['complete']} complete, {counts['pruned']} pruned, "
              f"{counts['failed']} failed. Wall time {b['spent']:.1f}s"
              + (f" of a {b['seconds']:.0f}s budget" if b["seconds"] else "")
              + f": {b['evidence'] or 0:.1f}s of evidence, {b['in_trials']:.1f}s in trials "
              f"(summed over workers). Shared features: built {result['caches']['built']} time(s), "
              f"reused {result['caches']['reused']} time(s)."]
    lines += [f"{r[0].upper()}{r[1:]}." for r in b["not_started"]]
    c = result.get("confirm") or {}
    if c.get("pooled"):
        lines.append(f"Finalists, scored again on {c['folds']} more hold-out fold(s) of data.train "
                     f"({c['seconds']:.1f}s): " + "; ".join(
                         f"trial {n} ({v['strategy']}) {100 * v['holdout_top1']:.2f}% on {v['images']} images"
                         for n, v in c["pooled"].items()) + ". The pick is made on those scores.")
    lines += [f"Confirmation not started: {r}." for r in c.get("not_started", [])]
    kept = (result.get("best") or {}).get("kept_over")
    if kept:
        lines.append(f"The recipe as written (trial {result['best']['trial']}) is kept over trial "
                     f"{kept['trial']} (hold-out top-1 {100 * kept['holdout_top1']:.2f}%, loss "
                     f"{kept['holdout_loss']:.4f}): its top-1 is not ahead by more than two paired "
                     "standard errors and it trains no fewer parameters; a lower hold-out loss alone "
                     "does not replace your recipe.")
    lines += [f"Skipped {k}: {v}" for k, v in skipped.items()]
    lines += [f"Trial {r['number']} ({r['strategy']}) failed: {r['reason'].splitlines()[0][:200]}"
              for r in rows if r["state"] == "failed" and r["reason"]]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    from thawkit.plugins.train.extras import available

    if not available("matplotlib"):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in sorted({r["strategy"] for r in rows if r["strategy"]}):
        pts = [(r["seconds"], 100 * r["holdout_top1"]) for r in rows
               if r["strategy"] == name and r["state"] == "complete" and r["seconds"] is not None]
        if pts:
            ax.scatter(*zip(*pts), label=name, s=22)
    ax.set_xlabel("seconds per trial")
    ax.set_ylabel("hold-out top-1 (%)")
    ax.set_title("accuracy against cost, per strategy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fold_file(trial_dir: Path, fold: int) -> Path:
    return trial_dir / f"fold-{fold}.json"


def pooled(search: Search, rows: list[dict[str, Any]], per_image: dict[int, Any],
           info: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[int, Any]]:
    """The finalists as rows scored on every image of the folds they were all scored on (the
    first hold-out included), with those per-image scores, for :func:`~.report.pick`."""
    numbers = info.get("finalists", [])
    scored = info.get("scored", {})
    if len(numbers) < 2 or not scored:
        return [], {}
    common = set.intersection(*(set(scored.get(str(n), [])) for n in numbers))
    if not common:
        return [], {}
    out_rows, out_scores = [], {}
    by_number = {r["number"]: r for r in rows}
    for n in numbers:
        first = per_image.get(n)
        if not first:
            return [], {}
        losses, correct = list(first["losses"]), list(first["correct"])
        for fold in sorted(common):
            extra = json.loads(fold_file(search.trial_dir(n), fold).read_text())["holdout"]
            losses += extra["losses"]
            correct += extra["correct"]
        row = dict(by_number[n])
        row["holdout_top1"] = sum(correct) / len(correct)
        row["holdout_loss"] = sum(losses) / len(losses)
        out_rows.append(row)
        out_scores[n] = {"losses": losses, "correct": correct}
    return out_rows, out_scores
