"""Confirming the finalists on more hold-outs before the pick.

A hold-out of a few dozen images ranks close trials largely by chance: with 10 labels per
class and ``--holdout 0.2``, one image is 10 points of top-1. So the search does not trust one
hold-out for its final choice. The best trial on the search's hold-out (fold 0, ranked as
:func:`~.report.pick` ranks) and up to :data:`FINALISTS` - 1 next ones still within reach of it
train again, each with its own recipe, on
``--confirm N`` more folds of ``data.train`` (``DIR/data/fold-1/``, ...: the next images of each
class held out, see :mod:`~.holdout`). The pick is then made as on one hold-out, on every
image of every fold the finalists were all scored on: three folds score each finalist on three
times as many images.

A confirmation run keeps only its scores (``DIR/trials/NNNN/fold-J.json``: per-image losses
and hits), never weights: the pick's weights are the fold-0 trial's, and ``best.yaml`` trains
on the whole of ``data.train`` anyway. A continued search reuses the runs already done. A
fold's features go through the search's shared features too (their key names the files, so a
fold never takes another's). Under a budget the search's trial loop keeps the time the
finalists of the moment would need (:func:`reserve`) once its first trials (every candidate
once) have started, and a confirmation run starts only while it fits; its feature counts are
not in ``search.json``'s ``caches`` (they count trials).
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from .engine import Search

#: how many of the best trials on the first hold-out are confirmed on more folds
FINALISTS = 3


def finalists(rows: list[dict[str, Any]], per_image: dict[int, Any] | None = None,
              k: int = FINALISTS) -> list[dict[str, Any]]:
    """The best complete trial on the first hold-out (top-1, then loss), and up to ``k - 1`` next
    ones still in reach of it: a top-1 and a hold-out loss each within two paired standard
    errors of its own (image by image, on the same hold-out). A trial clearly behind on either
    is not worth confirming, except the recipe as written, which the pick keeps unless it is
    beaten on top-1 (:func:`~.report.pick`): it is a finalist, first after the best, whenever
    its top-1 alone is in reach."""
    from .report import incumbent, paired_noise, per_image_hits, rank_key, scored

    done = sorted(scored(rows), key=rank_key)
    if not done:
        return []
    losses = {n: v["losses"] for n, v in (per_image or {}).items() if v}
    hits = per_image_hits(per_image)
    best = done[0]
    n = best["number"]

    def in_reach(r: dict[str, Any]) -> bool:
        m = r["number"]
        return r["holdout_top1"] >= best["holdout_top1"] - 2 * paired_noise(hits.get(m), hits.get(n)) \
            - 1e-12 and r["holdout_loss"] <= best["holdout_loss"] + \
            2 * paired_noise(losses.get(m), losses.get(n)) + 1e-12
    near = [r for r in done[1:] if in_reach(r)]
    own = incumbent(done)
    if own is not None and own is not best and own not in near[:k - 1] and \
            own["holdout_top1"] >= best["holdout_top1"] - 2 * paired_noise(hits.get(own["number"]),
                                                                        hits.get(n)) - 1e-12:
        near = [own] + [r for r in near if r is not own]  # the pick's incumbent: top-1 alone decides
    return [best] + near[:k - 1]


def reserve(search: Search) -> float:
    """Seconds to keep for confirming the finalists as they stand now (0 without ``--confirm``
    or with one finalist): what the search's trial loop leaves free of new trials."""
    from .report import trial_rows

    if search.s.confirm < 1:
        return 0.0
    rows = trial_rows(search)
    chosen = finalists(rows, search.holdout_scores(rows))
    if len(chosen) < 2:
        return 0.0
    return search.s.confirm * sum(r["seconds"] or 0.0 for r in chosen)


def confirm(search: Search, rows: list[dict[str, Any]], deadline: float | None) -> dict[str, Any]:
    """Score the finalists on folds 1..``--confirm``; returns what ``search.json`` keeps under
    ``confirm``: the finalists, the folds each was scored on, and the runs not started."""
    from .holdout import carve
    from .space import trial_recipe
    from .report import fold_file
    from .trial import Reporter, per_image, run_trial

    settings = search.s
    chosen = finalists(rows, search.holdout_scores(rows))
    info: dict[str, Any] = {"folds": settings.confirm, "finalists": [r["number"] for r in chosen],
                            "scored": {}, "not_started": [], "seconds": 0.0}
    if settings.confirm < 1 or len(chosen) < 2:
        return info
    started = time.perf_counter()
    recipe = search.recipe
    for fold in range(1, settings.confirm + 1):
        train_dir, holdout_dir, _ = carve(recipe.data.train, settings.output / "data" / f"fold-{fold}",
                                          settings.holdout, settings.seed, fold=fold)
        for row in chosen:
            folder = search.trial_dir(row["number"])
            path = fold_file(folder, fold)
            if path.is_file():
                continue
            left = None if deadline is None else deadline - time.time()
            cost = row["seconds"] or 0.0
            if left is not None and cost > left:
                info["not_started"].append(f"trial {row['number']} on fold {fold}: it takes about "
                                           f"{cost:.0f}s, {max(left, 0):.0f}s of the budget were left")
                continue
            data = trial_recipe(search.base, row["changes"])
            data["data"] = {**data["data"], "train": str(train_dir.resolve()),
                            "val": str(holdout_dir.resolve())}
            settings.log(f"confirming trial {row['number']} ({row['strategy']}) on hold-out fold {fold}")
            reporter = Reporter(lambda epoch, value: False)
            outcome = run_trial(data, folder / f"fold-{fold}", shared=search.shared, reporter=reporter,
                                pm=recipe.plugin_manager, scratch=settings.output / "scratch",
                                keep_tensors=False)
            scores = per_image(reporter.outputs) if outcome.state == "complete" else None
            path.write_text(json.dumps({"state": outcome.state, "reason": outcome.reason,
                                        "seconds": round(outcome.seconds, 3), "holdout": scores}))
    for row in chosen:
        folds = []
        for fold in range(1, settings.confirm + 1):
            path = fold_file(search.trial_dir(row["number"]), fold)
            if path.is_file() and json.loads(path.read_text()).get("holdout"):
                folds.append(fold)
        info["scored"][str(row["number"])] = folds
    info["seconds"] = round(time.perf_counter() - started, 3)
    return info
