"""Curves of a run (loss, accuracy, learning rate) with phase changes marked, as a PNG."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import read_jsonl, write_atomic
from .rundir import RunDir

# matplotlib (the `train` extra) is imported when a plot is drawn.



def phase_starts(rows: Sequence[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """``(epoch, phase, label)`` for every epoch at which the phase differs from the epoch before."""
    out, last = [], None
    for r in rows:
        if r.get("phase") != last and last is not None:
            out.append((r["epoch"], r["phase"], r.get("phase_label", "")))
        last = r.get("phase")
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Write ``curves.png`` from ``metrics.jsonl``; None when there is nothing to plot yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_jsonl(RunDir(run_dir).metrics)
    if not rows:
        return None
    out = Path(out) if out is not None else RunDir(run_dir).plot
    epochs = [r["epoch"] + 1 for r in rows]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.8))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", ms=3, label="train loss")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], "o-", ms=3, label="val loss")
    ax_acc.plot(epochs, [100 * r["val_top1"] for r in rows], "o-", ms=3, label="val top-1")
    if "val_top5" in rows[0] and any(r["val_top5"] < 1 for r in rows):  # 5 classes: always 100%
        ax_acc.plot(epochs, [100 * r["val_top5"] for r in rows], "o-", ms=3, label="val top-5")
    ax_acc.plot(epochs, [100 * r["train_top1"] for r in rows], "--", lw=1, label="train top-1")
    series: dict[tuple, str] = {}  # groups with identical lr curves are drawn once
    for g in rows[0]["lrs"]:
        series.setdefault(tuple(r["lrs"].get(g) for r in rows), g)
    shown = list(series.values())
    shown = shown if len(shown) <= 6 else [shown[0], shown[len(shown) // 2], shown[-1]]
    for g in shown:
        ax_lr.plot(epochs, [r["lrs"].get(g, float("nan")) for r in rows], ".-", ms=3, label=g)
    if all(r["lrs"].get(g, 0) > 0 for r in rows for g in shown):
        ax_lr.set_yscale("log")
    for ax, title, ylabel in ((ax_loss, "loss", "cross-entropy"), (ax_acc, "accuracy", "%"),
                              (ax_lr, "learning rate (epoch start)", "lr")):
        for epoch, phase, label in phase_starts(rows):
            ax.axvline(epoch + 0.5, color="grey", ls=":", lw=1)
            if ax is ax_acc:
                ax.annotate(f"phase {phase}: {label}"[:28], (epoch + 0.5, 0.02),
                            xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                            color="grey", va="bottom", ha="right")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(f"{run_dir.name}: dotted lines mark phase changes", fontsize=9)
    fig.tight_layout()
    write_atomic(out, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)
    return out


def plot_comparison(runs: dict[str, str | Path], out: str | Path, title: str = "") -> Path:
    """Validation top-1 per epoch of several runs in one PNG (the demo's summary plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run_dir in runs.items():
        rows = read_jsonl(RunDir(run_dir).metrics)
        epochs = [r["epoch"] + 1 for r in rows]
        line, = ax_acc.plot(epochs, [100 * r["val_top1"] for r in rows], "-", label=name)
        ax_loss.plot(epochs, [r["val_loss"] for r in rows], "-", color=line.get_color(), label=name)
        for epoch, _, _ in phase_starts(rows):
            ax_acc.axvline(epoch + 0.5, color=line.get_color(), ls=":", lw=0.8)
    ax_acc.set(title="val top-1 (dotted: phase changes)", xlabel="epoch", ylabel="%")
    ax_loss.set(title="val loss", xlabel="epoch", ylabel="cross-entropy")
    for ax in (ax_acc, ax_loss):
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    write_atomic(out, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)
    return out
