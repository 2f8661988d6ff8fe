"""``thawkit search --jobs 2`` with one set of shared features for the whole search against the
same search where each worker process computes its own (as before the features were shared).

    python benchmarks/search_tasks.py digits /tmp/digits
    python benchmarks/shared_features.py /tmp/digits/recipe.yaml --trials 16 --rounds 3

Runs A (shared) and B (per worker) interleaved, A B A B ..., each a fresh search of the same
seed into its own folder, in its own process, one thread; prints each run's wall time (the
process, start to end), its CPU seconds (with its workers'), the search's own figure
(``budget.spent``), the features built and reused and the seconds spent computing them (summed
over processes), and the medians. B is A with ``SharedFeatures`` restricted to its own process,
patched in the main process and (through spawn's re-import of this script) in every worker.
With ``--jobs 2`` the workers draw their trials as they free up, so A and B need not run the
very same trials. On a machine shared with other work, CPU seconds vary less than wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
PER_WORKER = "THAWKIT_BENCH_PER_WORKER"

if os.environ.get(PER_WORKER) == "1":  # B: every process keeps its features to itself
    from thawkit.plugins.search import shared as _shared

    _init = _shared.SharedFeatures.__init__

    def _own_only(self, directory=None, log=None):
        _init(self, None, log)

    _shared.SharedFeatures.__init__ = _own_only


def one(recipe: str, out: str, trials: int, jobs: int, strategies: str) -> None:
    import thawkit
    from thawkit.plugins.search import search

    search(thawkit.load_recipe(recipe), output=out, trials=trials, jobs=jobs, strategies=strategies,
           log=lambda line: None)


def _children_cpu() -> float:
    """CPU seconds of every finished child process and its children (the workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--strategies", default="head-only,last-block,lp-ft,full")
    ap.add_argument("--one", nargs=1, help=argparse.SUPPRESS)  # the output folder of one run
    args = ap.parse_args()
    if args.one:
        one(args.recipe, args.one[0], args.trials, args.jobs, args.strategies)
        return
    root = Path(tempfile.mkdtemp(prefix="shared-features-"))
    times: dict[str, list[float]] = {"A shared": [], "B per worker": []}
    cpu: dict[str, list[float]] = {name: [] for name in times}
    try:
        for r in range(args.rounds):
            for name in times:
                out = root / f"{name[0]}{r}"
                env = {**os.environ, PER_WORKER: "1" if name.startswith("B") else "0"}
                started, used = time.perf_counter(), _children_cpu()
                subprocess.run([sys.executable, __file__, args.recipe, "--trials", str(args.trials),
                                "--jobs", str(args.jobs), "--strategies", args.strategies,
                                "--one", str(out)], env=env, check=True, stdout=subprocess.DEVNULL)
                wall, seconds = time.perf_counter() - started, _children_cpu() - used
                saved = json.loads((out / "search.json").read_text())
                times[name].append(wall)
                cpu[name].append(seconds)
                print(f"round {r} {name}: {wall:.1f}s wall, {seconds:.1f}s CPU, "
                      f"search {saved['budget']['spent']:.1f}s, "
                      f"{saved['budget']['in_trials']:.1f}s in trials; features built "
                      f"{saved['caches']['built']}, reused {saved['caches']['reused']}, "
                      f"{saved['caches']['seconds']:.1f}s computing them", flush=True)
                shutil.rmtree(out)
        for name, values in times.items():
            print(f"{name}: median {statistics.median(values):.1f}s wall, "
                  f"{statistics.median(cpu[name]):.1f}s CPU over {len(values)} runs")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
