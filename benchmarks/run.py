"""thawkit's benchmarks: ``python benchmarks/run.py`` (minutes on 2 CPU cores) or ``--quick`` (a smoke run).

Seven groups (issue 9; the seventh, issue 19), each measured in this one process (startup and memory in child
processes), the two sides interleaved A B B A A B ..., the median of the repeats, on one CPU
thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``):

1. overhead: ``thawkit.adapt`` + ``adapted.optimizer`` + ``on_epoch_start`` against the
   tutorial's hand loop, per step, resnet18 head-only / last-block / full;
2. linear probe: 10 epochs head-only, features cached by thawkit against a hand loop
   that recomputes them, resnet18 and a timm ViT-Tiny; val accuracy of both;
3. last-block: cached against uncached, resnet18 and ViT-Tiny, next to the compute
   bound (FLOPs of an uncached training step over a cached one);
4. ``thawkit train`` against a hand loop on a gradual job (digits, resnet18 at 32 px,
   6 epochs), what the file writes cost;
5. startup: ``thawkit --help``, ``strategies``, ``plan`` wall time, and the largest imports;
6. peak memory (peak RSS above the model and data, in a child process each): last-block
   against full, and cached head-only against uncached;
7. search (``search_bench.py``): ``thawkit search`` with a budget of twice one default ``full``
   run against an exhaustive grid (every candidate at 3 learning rates), on the transfer tasks
   of ``search_tasks.py``: the pick's val top-1, wall time, the default recipe, cache savings.
8. Hugging Face Trainer: a gradual job on a tiny random BERT with ``ThawkitCallback`` and
   ``adapted.optimizer`` against a plain ``Trainer`` that flips the same ``requires_grad`` sets
   by hand (``hf_trainer_job.py``; needs ``thawkit[transformers]``).

Synthetic tensors or the demo's digits throughout; nothing is downloaded. No figure
here is a test: ``tests/test_benchmarks.py`` only runs ``--quick``.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("THAWKIT_PLUGINS", "")

import argparse  # noqa: E402 - the thread settings must come before torch is imported
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=DeprecationWarning)

import loops  # noqa: E402
import search_bench  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    repeats: int
    overhead_steps: int
    overhead_repeats: int
    overhead_size: int
    probe_n: int
    probe_size: int
    probe_epochs: int
    last_epochs: int
    gradual_epochs: int
    startup_repeats: int
    memory_size: int
    memory_repeats: int
    hf_n: int = 64
    hf_epochs: int = 3


FULL = Sizes(repeats=6, overhead_steps=2, overhead_repeats=40, overhead_size=64, probe_n=512,
             probe_size=64, probe_epochs=10, last_epochs=5, gradual_epochs=6, startup_repeats=5,
             memory_size=112, memory_repeats=3)
QUICK = Sizes(repeats=1, overhead_steps=1, overhead_repeats=1, overhead_size=32, probe_n=16,
              probe_size=32, probe_epochs=2, last_epochs=2, gradual_epochs=1, startup_repeats=1,
              memory_size=32, memory_repeats=1, hf_n=8, hf_epochs=2)


@dataclass
class Row:
    group: str
    what: str
    a: str
    b: str
    ratio: str
    goal: str


def interleaved(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, after one untimed warm-up each, run interleaved in
    pairs whose order alternates (A B, B A, A B, ...): on this machine the second of two
    back-to-back runs was measurably slower, whichever it was."""
    a()
    b()
    ta, tb = [], []
    for r in range(repeats):
        pair = ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta))
        for fn, times in pair:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return statistics.median(ta), statistics.median(tb)


# ------------------------------------------------------------------ groups
def overhead(s: Sizes) -> list[Row]:
    data = loops.synthetic(32, 8, s.overhead_size, batch=8)
    rows = []
    for strategy in ("head-only", "last-block", "full"):
        hand = loops.overhead_hand(strategy, data, s.overhead_steps)
        ours = loops.overhead_thawkit(strategy, data, s.overhead_steps)
        # short units, many pairs: other processes on a shared machine drift slowly, so finely
        # interleaved pairs see the same conditions
        th, tt = interleaved(hand, ours, s.overhead_repeats)
        per = s.overhead_steps
        rows.append(Row("1 overhead", f"resnet18 {strategy}, {s.overhead_size}px b8, ms/step",
                        f"hand {1000 * th / per:.1f}", f"thawkit {1000 * tt / per:.1f}",
                        f"{th / tt:.3f}x throughput", ">= 0.98x"))
    return rows


def probe(s: Sizes) -> list[Row]:
    data = loops.synthetic(s.probe_n, s.probe_n // 2, s.probe_size, batch=64 if s.probe_n > 64 else 8)
    rows = []
    models = {"resnet18": loops.resnet18,
              "timm vit_tiny": lambda: loops.vit_tiny(s.probe_size)}
    for name, build in models.items():
        acc: dict[str, float] = {}

        def hand(build=build, acc=acc):
            acc["hand"] = loops.probe_hand(build, data, s.probe_epochs)

        def cached(build=build, acc=acc):
            acc["cached"] = loops.probe_cached(build, data, s.probe_epochs)

        th, tc = interleaved(hand, cached, s.repeats)
        half = loops.probe_cached(build, data, s.probe_epochs, dtype="float16")
        rows.append(Row("2 linear probe", f"{name} head-only {s.probe_epochs} ep, {s.probe_n} img "
                        f"{s.probe_size}px, s", f"recompute {th:.2f}", f"cached {tc:.2f}",
                        f"{th / tc:.1f}x faster", ">= 8x"))
        rows.append(Row("2 linear probe", f"{name} val top-1 (float16 cache: {100 * half:.1f}%)",
                        f"{100 * acc['hand']:.1f}%", f"{100 * acc['cached']:.1f}%",
                        f"{100 * (acc['cached'] - acc['hand']):+.1f} pt", "within 0.5 pt"))
    return rows


def last_block(s: Sizes) -> list[Row]:
    data = loops.synthetic(s.probe_n, 8, s.probe_size, batch=128 if s.probe_n > 128 else 8)
    rows = []
    models = {"resnet18": loops.resnet18, "timm vit_tiny": lambda: loops.vit_tiny(s.probe_size)}
    e = s.last_epochs
    for name, build in models.items():
        f = loops.step_flops(build, "last-block", s.probe_size)
        # the bound counts the cache's own pass: E uncached epochs against one prefix pass plus E
        # epochs of the rest (FLOPs per image; the optimizer step and memory traffic are not FLOPs)
        bound = e * f["step"] / (f["prefix"] + e * f["cached_step"])
        tu, tc = interleaved(lambda build=build: loops.last_block(build, data, e, False),
                             lambda build=build: loops.last_block(build, data, e, True),
                             s.repeats)
        speedup = tu / tc
        rows.append(Row("3 last-block", f"{name} {e} ep, {s.probe_n} img {s.probe_size}px b128 "
                        "(cache built inside), s", f"uncached {tu:.2f}", f"cached {tc:.2f}",
                        f"{speedup:.2f}x", f"{100 * speedup / bound:.0f}% of bound {bound:.2f}x "
                        "(goal >= 80%)"))
    return rows


def gradual(s: Sizes) -> list[Row]:
    import gradual_job
    from thawkit.plugins.train.demo import write_digits

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_digits(root / "digits")
        data = root / "digits" / "pretrain"
        if s is QUICK:  # a few images per class
            for image in sorted(data.glob("*/*/*.png"))[::-1]:
                if int(image.stem) % 20:
                    image.unlink()
        runs = iter(range(10**6))
        out: dict[str, dict] = {}

        def hand():
            out["hand"] = gradual_job.hand(data, root / f"hand{next(runs)}", s.gradual_epochs)

        def ours():
            out["thawkit"] = gradual_job.with_thawkit(data, root / f"thawkit{next(runs)}",
                                                      s.gradual_epochs)

        th, tt = interleaved(hand, ours, s.repeats)
    t = out["thawkit"]
    return [Row("4 thawkit train", f"gradual digits 0-4 resnet18 32px {s.gradual_epochs} ep, s",
                f"hand {th:.2f}", f"thawkit {tt:.2f}", f"{tt / th:.3f}x wall", "<= 1.05x"),
            Row("4 thawkit train", "of which file writes (thawkit: checkpoint + weights; plot), s",
                f"{out['hand']['writes']:.2f}", f"{t['writes']:.2f}; plot {t['plot']:.2f}",
                f"val top-1 {100 * out['hand']['top1']:.1f}% / {100 * t['top1']:.1f}%", "")]


def startup(s: Sizes) -> list[Row]:
    recipe = "examples/recipes/resnet18_gradual.yaml"
    commands = {"--help": ["--help"], "strategies": ["strategies"], "plan": ["plan", recipe, "--no-data"]}
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(s.startup_repeats):
        for name, args in commands.items():
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "thawkit", *args], cwd=ROOT, check=True,
                           capture_output=True)
            times[name].append(time.perf_counter() - started)
    rows = [Row("5 startup", f"thawkit {name}, s", f"{statistics.median(t):.2f}", "", "", "")
            for name, t in times.items()]
    for name, args in commands.items():
        top, timm = imports(args)
        rows.append(Row("5 startup", f"thawkit {name}: largest imports (cumulative ms)", top, "",
                        "imports timm" if timm else "no timm", "no timm for torchvision"))
    return rows


def imports(args: list[str]) -> tuple[str, bool]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "thawkit", *args], cwd=ROOT,
                            check=True, capture_output=True, text=True)
    top = []
    seen = set()
    for line in result.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            name = m.group(3)
            seen.add(name.split(".")[0])
            if not m.group(2):  # imported from the top, not as a dependency of another
                top.append((int(m.group(1)), name))
    best = sorted(top, reverse=True)[:3]
    return ", ".join(f"{n} {us / 1000:.0f}" for us, n in best), "timm" in seen


def memory(s: Sizes) -> list[Row]:
    def peak(config: str) -> float:
        result = subprocess.run([sys.executable, __file__, "--memory-probe", config,
                                 *(["--quick"] if s is QUICK else [])],
                                check=True, capture_output=True, text=True)
        return float(result.stdout.strip().splitlines()[-1])

    rows = []
    for a, b, goal in (("full", "last-block", "<= 0.7x"), ("head-uncached", "head-cached", "")):
        pa, pb = [], []
        for _ in range(s.memory_repeats):
            pa.append(peak(a))
            pb.append(peak(b))
        ma, mb = statistics.median(pa), statistics.median(pb)
        rows.append(Row("6 peak memory", f"resnet18 b32 {s.memory_size}px, MB above model+data",
                        f"{a} {ma:.0f}", f"{b} {mb:.0f}", f"{mb / ma:.2f}x" if ma else "-", goal))
    return rows


def memory_probe(config: str, s: Sizes) -> None:
    """Run one configuration; print its peak RSS above what the model and data took (MB)."""
    data = loops.synthetic(256 if s is FULL else 32, 8, s.memory_size, batch=32)
    strategy = {"full": "full", "last-block": "last-block"}.get(config, "head-only")
    adapted = loops.thawkit.adapt(loops.resnet18(), strategy, num_classes=data.classes)
    optimizer = adapted.optimizer("adamw", lr=1e-3)
    adapted.model.train()
    before = reset_peak_rss()
    if config == "head-cached":
        frozen = loops.frozen_prefix(adapted)
        cache = loops.FeatureCache(frozen.split.prefix, loops.DataLoader(
            loops.TensorDataset(data.x, data.y), batch_size=32))
        for x, y in cache.batches(data.order(0)):
            loops.step(frozen.split.rest, optimizer, x, y)
    else:
        for x, y in list(data.batches(0))[:3]:
            loops.step(adapted.model, optimizer, x, y)
    print((peak_rss() - before) / 1024)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> int:
    """Reset the peak RSS (Linux ``clear_refs``) and return the RSS now, in KB.

    ``ru_maxrss`` cannot serve: a child started from a large parent inherits its peak.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return _status_kb("VmRSS") or 0


def peak_rss() -> int:
    """The peak RSS since :func:`reset_peak_rss`, in KB."""
    return _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def search(s: Sizes) -> list[Row]:
    return search_bench.rows(s is QUICK, Row)


def hf_trainer(s: Sizes) -> list[Row]:
    import hf_trainer_job

    th, tt = interleaved(lambda: hf_trainer_job.hand(s.hf_n, s.hf_epochs),
                         lambda: hf_trainer_job.with_thawkit(s.hf_n, s.hf_epochs), s.repeats)
    return [Row("8 HF Trainer", f"tiny BERT gradual {s.hf_epochs} ep, {s.hf_n} texts b8, s",
                f"plain Trainer {th:.2f}", f"thawkit {tt:.2f}", f"{tt / th:.3f}x wall", "<= 1.02x")]


GROUPS = {"overhead": overhead, "probe": probe, "last-block": last_block, "gradual": gradual,
          "startup": startup, "memory": memory, "search": search, "hf-trainer": hf_trainer}


def table(rows: list[Row]) -> str:
    header = ["group", "measurement", "A", "B", "ratio", "goal"]
    cells = [header] + [[r.group, r.what, r.a, r.b, r.ratio, r.goal] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke run")
    parser.add_argument("--only", nargs="+", choices=sorted(GROUPS), help="run only these groups")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.memory_probe:
        memory_probe(args.memory_probe, sizes)
        return 0
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, torch {torch.__version__}, 1 thread, "
          f"{'quick' if args.quick else 'full'} sizes, median of {sizes.repeats}", flush=True)
    rows: list[Row] = []
    for name, group in GROUPS.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        found = group(sizes)
        rows += found
        print(f"# {name}: {time.perf_counter() - started:.0f}s", flush=True)
        print(table(found), flush=True)
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
