"""``thawkit probe``: a learning-rate sweep of linear probes for the cost of one.

A head-only recipe, several learning rates: ``thawkit probe RECIPE --lr 1e-3 --lr 1e-2
--lr 1e-1``. The frozen backbone's pre-logits features are computed once (the feature
cache, :mod:`thawkit.plugins.train.cache`), then one copy of the fresh head per rate
trains on the same batches, each with its own optimizer and schedule built from the
recipe's ``optimizer`` and ``schedule`` sections with ``optimizer.lr`` replaced. Each
head starts from the same initial weights, so with no dropout in the head each one
trains exactly as ``thawkit train`` with ``--set optimizer.lr=LR`` would (dropout
draws its masks head after head, so they differ from single runs).

The run directory holds the recipe, plan and data description as for ``thawkit
train``, plus ``probe.json`` (for every rate, every epoch's train loss and
validation loss and top-1) and ``heads.safetensors`` (every head's final weights,
keys ``lr=<rate>/<the model's parameter name>``). The probe needs what the cache needs:
``strategy: head-only``, ``data.augment: false`` and a model that thawkit can split.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.func import functional_call
from thawkit import ConfigError
from thawkit.plugins.split import frozen_prefix

from .._deprecation import recipe_manager
from .cache import CacheDecision, CachedPipeline
from .checkpoint import save_weights, write_json
from .rundir import RunDir, make_run_dir, remove_if_unused, run_lock
from .schedules import end_epoch
from .session import check_new_run_dir, make_scheduler, prepare, torch_flags_restored
from .data import RESUME_ADVICE, DataError
from .events import ValOutputs
from .loop import _worker_message
from .readers import reader_for

if TYPE_CHECKING:
    from thawkit import Adapted, Recipe, ThawkitPluginManager

    from .data import Preprocess
    from .session import Session



@dataclass
class ProbeResult:
    """One learning rate's head: metrics per epoch (``epoch``, counted from 1, ``train_loss``,
    ``val_loss``, ``val_top1``)."""

    lr: float
    epochs: list[dict[str, float]] = field(default_factory=list)
    #: per-sample results of the latest epoch's evaluation
    val_outputs: ValOutputs | None = None

    @property
    def final_top1(self) -> float:
        return self.epochs[-1]["val_top1"]

    @property
    def best(self) -> dict[str, float]:
        return max(self.epochs, key=lambda r: r["val_top1"])


class Head:
    """A copy of the head's trainable parameters with its own optimizer and schedule."""

    def __init__(self, lr: float, session: Session, rest: Any):
        self.lr = lr
        trainable = {id(p): n for n, p in rest.named_parameters() if p.requires_grad}
        self.params = {n: p.detach().clone().requires_grad_(True) for n, p in rest.named_parameters()
                       if id(p) in trainable}
        model_names = {id(p): n for n, p in session.model.named_parameters()}
        self.model_names = {n: model_names[i] for i, n in trainable.items()}  # rest's name -> model's
        by_id = {i: self.params[n] for i, n in trainable.items()}
        recipe = session.recipe
        settings = recipe.optimizer.model_copy(update={"lr": lr})
        groups = []
        for group in session.adapted.param_groups(settings):
            own = [by_id[id(p)] for p in group["params"] if id(p) in by_id]
            if own:
                groups.append({**group, "params": own})
        factory = session.recipe.plugin_manager.optimizers.get(settings.name, where="optimizer.name")
        self.optimizer = factory(groups, lr=settings.lr, weight_decay=settings.weight_decay,
                                 **settings.kwargs)
        self.scheduler, self.interval = make_scheduler(recipe, self.optimizer,
                                                       session.loaders.steps_per_epoch)
        self.result = ProbeResult(lr)


def check_probe(adapted: Adapted, prep: Preprocess) -> Any:
    """The split below the head, or a :class:`thawkit.ConfigError` saying why the probe cannot run."""
    if len(adapted.phases) != 1:
        raise ConfigError(f"probe: strategy {adapted.strategy.name!r} has {len(adapted.phases)} "
                          "phases; a probe sweeps linear heads: use strategy: head-only")
    frozen = frozen_prefix(adapted)
    if frozen.block != "head":
        raise ConfigError(f"probe: strategy {adapted.strategy.name!r} trains below the head (from "
                          f"block {frozen.block!r}); a probe sweeps linear heads: use strategy: "
                          "head-only")
    if prep.augment:
        raise ConfigError("probe: data.augment is true; the probe trains on features computed "
                          "once, so it needs data.augment: false")
    if not frozen:
        raise ConfigError(f"probe: the backbone's features cannot be cached: {frozen.reason}")
    return frozen.split


def probe(recipe: Recipe, lrs: Sequence[float], *, pm: ThawkitPluginManager | None = None,
          run_dir: str | Path | None = None, log: Callable[[str], None] = print,
          pipeline: Callable[[Session], Any] | None = None) -> list[ProbeResult]:
    """Train one head-only linear probe per learning rate in ``lrs`` on features computed once.

    Example::

        recipe = thawkit.load_recipe("probe.yaml")  # strategy: head-only, data.augment: false
        results = probe(recipe, [1e-3, 1e-2, 1e-1], run_dir="runs/probe")
        best = max(results, key=lambda r: r.final_top1)

    The recipe's plugin manager builds everything; ``pm=`` is deprecated.
    ``pipeline(session)``: the pipeline that serves the features (default: a
    :class:`~thawkit.plugins.train.cache.CachedPipeline` of the probe's own; ``thawkit search``
    passes one that shares its features with the search's other trials).
    """
    recipe_manager(recipe, pm, "probe")
    if not lrs:
        raise ConfigError("probe: give at least one learning rate (--lr)")
    if any(not lr > 0 for lr in lrs):
        raise ConfigError(f"probe: learning rates must be > 0, got {list(lrs)}")
    off = reader_for(recipe).cache_off
    if off is not None:  # the probe trains on cached features
        raise ConfigError(f"probe: data.reader {recipe.data.reader}: {off}; a probe trains heads on "
                          "cached features, so it reads images only")
    run_dir = Path(run_dir if run_dir is not None else recipe.train.output)
    created = make_run_dir(run_dir, "probe --output")
    try:
        with run_lock(run_dir):  # one process writes a run directory at a time, as in train
            replaced = check_new_run_dir(run_dir, "probe")
            if replaced:
                log(f"note: {replaced}")
            with torch_flags_restored():
                splits: list[Any] = []  # checked before prepare() writes the run's files
                session = prepare(recipe, run_dir=run_dir,
                                  check=lambda adapted, prep: splits.append(check_probe(adapted, prep)))
                split = splits[0]
                log(f"{session.describe()}; probing {len(lrs)} learning rates on features below "
                    "the head, computed once")
                return _sweep(session, split, list(lrs), log, pipeline)
    except DataError as exc:  # train's advice ends in --resume, which probe does not have
        if created:
            remove_if_unused(run_dir)
        raise DataError(_worker_message(exc).removesuffix(RESUME_ADVICE)
                        + ", then run thawkit probe again") from None
    except BaseException:
        if created:
            remove_if_unused(run_dir)
        raise


def _sweep(session: Session, split: Any, lrs: list[float], log: Callable[[str], None],
           pipeline_of: Callable[[Session], Any] | None = None) -> list[ProbeResult]:
    pipeline = pipeline_of(session) if pipeline_of else CachedPipeline(session, log=lambda line: None)
    heads = [Head(lr, session, split.rest) for lr in lrs]
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=session.recipe.train.label_smoothing)
    model, rest = session.model, split.rest
    try:
        pipeline.build(CacheDecision(0, 0, session.epochs, True, "probe", "head", split=split))
        for epoch in range(session.epochs):
            started = time.perf_counter()
            model.train()
            sums = [0.0] * len(heads)
            seen = 0
            for x, y in pipeline.train_batches(epoch, 0):
                for k, head in enumerate(heads):
                    loss = criterion(functional_call(rest, head.params, (x,)), y)
                    head.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if session.recipe.train.grad_clip:
                        torch.nn.utils.clip_grad_norm_(list(head.params.values()),
                                                       session.recipe.train.grad_clip)
                    head.optimizer.step()
                    if head.interval == "step":
                        head.scheduler.step()
                    sums[k] += float(loss.detach()) * y.shape[0]
                seen += int(y.shape[0])
            model.eval()
            for k, head in enumerate(heads):
                val, head.result.val_outputs = _evaluate(pipeline, rest, head.params)
                end_epoch(head.scheduler, head.interval, val["val_loss"])
                head.result.epochs.append({"epoch": epoch + 1, "train_loss": sums[k] / max(seen, 1), **val})
            log(f"epoch {epoch + 1}/{session.epochs} top1 "
                + "  ".join(f"lr {h.lr:g}: {100 * h.result.final_top1:.2f}%" for h in heads)
                + f"  {time.perf_counter() - started:.1f}s")
    finally:
        pipeline.close()
    results = [h.result for h in heads]
    write_json(session.files.probe, {"lrs": lrs, "results": [
        {"lr": r.lr, "final_top1": r.final_top1, "best_top1": r.best["val_top1"],
         "best_epoch": r.best["epoch"], "epochs": r.epochs} for r in results]})
    save_weights(session.files.probe_heads,
                 {f"lr={h.lr:g}/{h.model_names[name]}": p for h in heads for name, p in h.params.items()})
    log(format_results(results))
    return results


def _evaluate(pipeline: Any, rest: Any, params: dict[str, Any]) -> tuple[dict[str, float], ValOutputs]:
    losses, hits = [], []
    with torch.no_grad():
        for x, y in pipeline.val_batches():
            logits = functional_call(rest, params, (x,)).float()
            losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
            hits.append((logits.argmax(1) == y).cpu())
    each, right = torch.cat(losses), torch.cat(hits)
    n = int(each.numel())
    return {"val_loss": float(each.sum()) / n, "val_top1": int(right.sum()) / n}, ValOutputs(each, right)


def format_results(results: list[ProbeResult]) -> str:
    best = max(results, key=lambda r: r.final_top1)
    lines = ["lr          val top-1  best top-1 (epoch)  val loss"]
    for r in results:
        mark = "  <- best" if r is best else ""
        lines.append(f"{r.lr:<10g}  {100 * r.final_top1:8.2f}%  {100 * r.best['val_top1']:8.2f}% "
                     f"({r.best['epoch']:>3})    {r.epochs[-1]['val_loss']:.4f}{mark}")
    return "\n".join(lines)


def read_probe(run_dir: str | Path) -> dict[str, Any]:
    """``probe.json`` of a probe's run directory, epochs counted from 1 (a probe written before
    thawkit counted them from 1 everywhere is renumbered)."""
    data = json.loads(RunDir(run_dir).probe.read_text())
    for result in data.get("results", []):
        if result.get("epochs") and result["epochs"][0].get("epoch") == 0:
            result["epochs"] = [{**e, "epoch": e["epoch"] + 1} for e in result["epochs"]]
            result["best_epoch"] += 1
    return data
