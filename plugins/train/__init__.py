"""The reference training loop behind ``thawkit train``, ``predict``, ``export`` and ``demo``.

Imported lazily (no torch until a function is used)::

    from thawkit.plugins.train import train, resume
    recipe = thawkit.load_recipe("recipe.yaml")
    outcome = train(recipe, run_dir="runs/try1", stop_after=2)   # status "stopped"
    outcome = resume("runs/try1")                                # bit-identical to one go

Modules: ``data`` (ImageFolder checks, transforms, seeded order), ``session``
(recipe -> model, optimizer, schedule, run directory), ``loop`` (the epoch
loop), ``pipeline`` (batches in, logits out), ``rundir`` (the run directory's layout,
:class:`~.rundir.RunDir`, its lock and readers), ``checkpoint`` (atomic files), ``plot``,
``run_model`` (a run's trained model), ``inference`` (predict, export),
``events`` (:class:`Run`, what the event hooks see, and the plugins a run registers for
itself), ``loggers`` (``metrics.jsonl``, TensorBoard, MLflow), ``demo`` and ``commands`` (the CLI
subcommands), ``features`` (:class:`FeatureCache`, the
frozen prefix's outputs computed once, for your own loop), ``cache`` (when ``thawkit train``
caches them), ``probe`` (``thawkit probe``: a learning-rate sweep of linear probes) and ``wise``
(WiSE-FT for runs: their recorded starting weights, ``wise_model``, the end-of-run sweep).
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "train": "runs", "resume": "runs", "summary": "runs",
    "Trainer": "loop", "Pipeline": "pipeline", "Outcome": "loop", "DivergedError": "loop",
    "DataError": "data", "CheckpointError": "checkpoint",
    "load_run_model": "run_model", "predict": "inference", "export_run": "inference",
    "load_exported": "inference", "exported_transform": "inference", "exported_batch": "inference",
    "ExportError": "inference",
    "run_demo": "demo", "plot_run": "plot", "FeatureCache": "features",
    "wise_model": "wise", "start_state": "wise", "Run": "events",
    "ValOutputs": "events",
}

__all__ = [
    "CheckpointError",
    "DataError",
    "DivergedError",
    "ExportError",
    "FeatureCache",
    "Outcome",
    "Pipeline",
    "Run",
    "Trainer",
    "ValOutputs",
    "export_run",
    "exported_batch",
    "exported_transform",
    "load_exported",
    "load_run_model",
    "plot_run",
    "predict",
    "resume",
    "run_demo",
    "start_state",
    "summary",
    "train",
    "wise_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'thawkit.plugins.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return __all__
