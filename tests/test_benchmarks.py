"""The benchmark script keeps working: ``benchmarks/run.py --quick`` runs every group on tiny sizes.

No timing is asserted (the figures are for people, from a full run on a quiet machine).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_prints_every_group():
    env = {**os.environ, "THAWKIT_PLUGINS": ""}
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--quick"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout.rsplit("\n\n", 1)[-1]
    groups = {line.split("|")[0].strip() for line in table.splitlines()[2:]}
    assert groups == {"1 overhead", "2 linear probe", "3 last-block", "4 thawkit train", "5 startup",
                      "6 peak memory", "7 search", "8 HF Trainer"}
    assert "x throughput" in table and "% of bound" in table and "x wall" in table
