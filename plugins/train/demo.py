"""``thawkit demo``: the whole job on data that ships with scikit-learn, offline, in a few minutes.

1. Write scikit-learn's handwritten digits (8x8 scans, 1797 images) as ImageFolders.
2. Pretrain a small CNN on digits 0-4 with ``thawkit train`` and export it as a local
   ``.safetensors`` file: the "pretrained backbone" a user would bring.
3. Adapt it to a new task, digits 5-9 with 10 labels per class, through
   ``backbone.weights`` (that is, ``thawkit.load_backbone(spec, weights=file)``) with
   head-only, last-block, gradual, full fine-tuning and LP-FT, and train the same
   architecture from scratch for comparison.
4. Print a table (strategy, trainable parameters, wall seconds, val accuracy) built
   from the runs' own ``metrics.jsonl``, and write a comparison plot.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import thawkit
import numpy as np
import torch
from thawkit import ConfigError, default_plugin_manager, validate_recipe

from .checkpoint import read_jsonl
from .extras import require
from .inference import export_run
from .plot import plot_comparison
from .rundir import RunDir
from .runs import train

if TYPE_CHECKING:
    from thawkit import ThawkitPluginManager

# scikit-learn (the `train` extra) is imported by the demo when it runs.

SPEC = "python:thawkit.plugins.train.demo_model:small_cnn"
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
LABELS_PER_CLASS = 10


@dataclass(frozen=True)
class DemoSettings:
    width: int = 16
    pretrain_epochs: int = 8
    epochs: int = 15
    every: int = 3              # gradual: epochs between thawing steps
    head_lr: float = 5e-2       # head-only trains a linear layer: a larger lr suits it
    lr: float = 3e-3
    layer_decay: float | None = None  # pretrained variants: lr * decay ** (blocks below the head)
    probe_epochs: int = 5       # lp-ft: head-only epochs before fine-tuning


FULL = DemoSettings()
QUICK = DemoSettings(pretrain_epochs=2, epochs=5, every=1, probe_epochs=2)


@dataclass
class DemoRow:
    """One line of the demo's table; every number is read back from the run directory."""

    name: str
    strategy: str
    trainable_first: int
    trainable_last: int
    epochs: int
    wall_seconds: float
    first_top1: float           # after the first epoch: the head start pretraining gives
    final_top1: float
    best_top1: float
    run_dir: str

    @property
    def trainable(self) -> str:
        if self.trainable_first == self.trainable_last:
            return f"{self.trainable_last:,}"
        return f"{self.trainable_first:,} -> {self.trainable_last:,}"


def write_digits(root: Path, *, seed: int = 0) -> dict[str, Any]:
    """ImageFolders of the digits: pretrain (0-4, 80/20 split) and target (5-9, 10 per class)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}

    def save(split: str, label: int, indices) -> None:
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for i in indices:
            pixels = (digits.images[i] * (255.0 / 16.0)).round().astype("uint8")
            Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
        counts[split] = counts.get(split, 0) + len(indices)

    for label in PRETRAIN_CLASSES + TARGET_CLASSES:
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        if label in PRETRAIN_CLASSES:
            cut = int(0.8 * len(idx))
            save("pretrain/train", label, idx[:cut])
            save("pretrain/val", label, idx[cut:])
        else:
            save("target/train", label, idx[:LABELS_PER_CLASS])
            save("target/val", label, idx[LABELS_PER_CLASS:])
    return counts


def _recipe(name: str, *, strategy: dict[str, Any], data: Path, out: Path, epochs: int,
            lr: float, weights: str | None, batch_size: int, width: int, pm,
            layer_decay: float | None = None) -> Any:
    # num_classes matches the pretrained head so its weights load; adapt() then replaces it
    backbone: dict[str, Any] = {"source": "python", "name": SPEC.split(":", 1)[1],
                                "kwargs": {"width": width, "num_classes": len(PRETRAIN_CLASSES)}}
    if weights:
        backbone["weights"] = weights
    return validate_recipe({
        "backbone": backbone,
        "strategy": strategy,
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 1e-4, "layer_decay": layer_decay},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        # digits are not mirror-symmetric: no flips; no crops on 8x8 scans either
        "data": {"train": str(data / "train"), "val": str(data / "val"), "image_size": 16,
                 "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "augment": False,
                 "batch_size": batch_size},
        "train": {"epochs": epochs, "seed": 0, "deterministic": True, "device": "cpu",
                  "output": str(out / name)},
    }, where=f"demo recipe {name!r}", pm=pm)


def pretrained_variants(cfg: DemoSettings, weights: str) -> list[tuple[str, dict[str, Any], str, float]]:
    """The demo's rows that start from the pretrained file: (name, strategy, weights, lr). Each
    is one run; a new strategy's row goes here."""
    return [("head-only", {"name": "head-only"}, weights, cfg.head_lr),
            ("last-block", {"name": "last-block"}, weights, cfg.lr),
            ("gradual", {"name": "gradual", "every": cfg.every}, weights, cfg.lr),
            ("full", {"name": "full"}, weights, cfg.lr),
            # the probe at head-only's rate, then the backbone at the rate the others use
            ("lp-ft", {"name": "lp-ft", "probe_epochs": cfg.probe_epochs,
                       "backbone_lr_scale": cfg.lr / cfg.head_lr}, weights, cfg.head_lr)]


def _timed_run(recipe, run_dir: Path) -> float:
    started = time.perf_counter()
    train(recipe, run_dir=run_dir, log=lambda line: None, progress_bar=False)
    return time.perf_counter() - started


def row_from_run(name: str, strategy: str, run_dir: Path, wall_seconds: float) -> DemoRow:
    rows = read_jsonl(RunDir(run_dir).metrics)
    return DemoRow(name, strategy, rows[0]["trainable_params"], rows[-1]["trainable_params"],
                   len(rows), round(wall_seconds, 1), rows[0]["val_top1"], rows[-1]["val_top1"],
                   max(r["val_top1"] for r in rows), str(run_dir))


def format_table(rows: list[DemoRow]) -> str:
    header = ["strategy", "trainable params", "epochs", "wall s", "val top-1", "best top-1",
              "top-1 after epoch 1"]
    body = [[r.name, r.trainable, str(r.epochs), f"{r.wall_seconds:.1f}",
             f"{100 * r.final_top1:.1f}%", f"{100 * r.best_top1:.1f}%",
             f"{100 * r.first_top1:.1f}%"] for r in rows]
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(cells, widths))) for cells in body]
    return "\n".join(lines)


def run_demo(output: str | Path = "thawkit-demo", *, quick: bool = False,
             pm: ThawkitPluginManager | None = None, log: Callable[[str], None] = print,
             settings: DemoSettings | None = None) -> list[DemoRow]:
    """Run the demo into ``output`` and return its table rows (see the module docstring)."""
    require("sklearn", "thawkit demo (its digits come from scikit-learn)")
    require("matplotlib", "thawkit demo (its comparison plot)")
    pm = pm or default_plugin_manager()
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"demo: {str(out)!r} is not empty; remove it or pass --output NEWDIR")
    started = time.perf_counter()
    threads = torch.get_num_threads()
    # a model this small runs faster on one thread than on several that wait for each other
    torch.set_num_threads(1)
    try:
        return _demo(out, settings or (QUICK if quick else FULL), pm=pm, log=log, started=started)
    finally:
        torch.set_num_threads(threads)


def _demo(out: Path, cfg: DemoSettings, *, pm, log: Callable[[str], None],
          started: float) -> list[DemoRow]:
    pre_epochs, epochs = cfg.pretrain_epochs, cfg.epochs
    counts = write_digits(out / "data")
    log(f"digits from scikit-learn written to {out / 'data'}: pretrain 0-4: "
        f"{counts['pretrain/train']} train / {counts['pretrain/val']} val images; target 5-9: "
        f"{counts['target/train']} train ({LABELS_PER_CLASS} per class) / {counts['target/val']} val")

    log(f"1. pretraining {SPEC} (width {cfg.width}) on digits 0-4 for {pre_epochs} epochs ...")
    pre = _recipe("pretrain-digits-0-4", strategy={"name": "full"}, data=out / "data" / "pretrain",
                  out=out / "runs", epochs=pre_epochs, lr=cfg.lr, weights=None, batch_size=64,
                  width=cfg.width, pm=pm)
    pre_dir = out / "runs" / "pretrain-digits-0-4"
    seconds = _timed_run(pre, pre_dir)
    pre_row = row_from_run("pretrain 0-4", "full", pre_dir, seconds)
    weights, _ = export_run(pre_dir, out / "pretrained-digits-0-4.safetensors", pm=pm)
    log(f"   val top-1 on digits 0-4: {100 * pre_row.final_top1:.1f}% in {seconds:.1f}s; "
        f"saved as {weights}")

    model = thawkit.load_backbone(SPEC, pm=pm, weights=str(weights), width=cfg.width,
                                   num_classes=len(PRETRAIN_CLASSES))
    n = sum(p.numel() for p in model.parameters())
    log(f"2. thawkit.load_backbone({SPEC!r}, weights={str(weights)!r}) -> {type(model).__name__}, "
        f"{n:,} parameters")

    log(f"3. adapting to digits 5-9 with {LABELS_PER_CLASS} labels per class, {epochs} epochs each:")
    variants = [*pretrained_variants(cfg, str(weights)),
                ("scratch (full, no pretraining)", {"name": "full"}, None, cfg.lr)]
    rows = []
    for name, strategy, w, lr in variants:
        run_name = name.split(" ")[0]
        recipe = _recipe(run_name, strategy=strategy, data=out / "data" / "target",
                         out=out / "runs", epochs=epochs, lr=lr, weights=w, batch_size=16,
                         width=cfg.width, pm=pm, layer_decay=cfg.layer_decay if w else None)
        run_dir = out / "runs" / run_name
        seconds = _timed_run(recipe, run_dir)
        row = row_from_run(name, strategy["name"], run_dir, seconds)
        rows.append(row)
        log(f"   {name}: val top-1 {100 * row.final_top1:.1f}% ({seconds:.1f}s) -> {run_dir}")

    plot = plot_comparison({r.name: r.run_dir for r in rows}, out / "comparison.png",
                           title=f"digits 5-9, {LABELS_PER_CLASS} labels per class, from a backbone "
                                 "pretrained on digits 0-4")
    (out / "results.json").write_text(json.dumps(
        {"pretrain": asdict(pre_row), "adapt": [asdict(r) for r in rows],
         "total_seconds": round(time.perf_counter() - started, 1)}, indent=2) + "\n")
    table = format_table(rows)
    (out / "results.md").write_text(table + "\n")
    log("")
    log(table)
    n_val = len(list((out / "data" / "target" / "val").rglob("*.png")))
    log(f"(one seed per strategy; on {n_val} validation images one point of accuracy is "
        f"{n_val / 100:.0f} images)")
    log("")
    log(f"plot: {plot}; per-run curves: {out / 'runs'}/*/curves.png; table: {out / 'results.md'}")
    log(f"total {time.perf_counter() - started:.1f}s")
    return rows
