"""Short runs of every method whose metrics must not change when the code is refactored.

``python -m tests.behaviour record`` writes ``tests/data/behaviour.json`` from the current code;
``tests/integration/test_behaviour.py`` re-runs the same commands and compares every value exactly. The runs
compute under portable numerics (:mod:`acdc_bench.numerics`: ATen and oneDNN capped to AVX2, the
linear products on OpenBLAS's Haswell kernels and the fixed-order sparse kernels, pinned before
torch starts in a process of their own), so
the record holds bit for bit on Intel and AMD x86-64 CPUs with AVX2, whatever the numerics of the
process that asks for it. The record says which CPU made it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

try:  # under pytest, tests/ is on sys.path
    from helpers import SHORT
except ImportError:  # python -m tests.behaviour
    from tests.helpers import SHORT

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "data" / "behaviour.json"
#: One line each: the ``acdc-bench run`` arguments (after ``--out``).
COMMANDS = [
    ["--method", "dense", "--sparsity", "0", "--budget", "paper"],
    ["--method", "acdc", "--sparsity", "0.9", "--budget", "paper"],
    ["--method", "gmp", "--sparsity", "0.9", "--budget", "paper"],
    ["--method", "rigl", "--sparsity", "0.9", "--budget", "paper", "--set", "methods.rigl.update_interval=3"],
    ["--method", "set", "--sparsity", "0.9", "--budget", "paper", "--set", "methods.set.update_interval=3"],
    # STR's sparsity follows lam and s_init, untuned for these 4-epoch runs: its end-of-run check is
    # opened (the record holds what STR computes; tests/unit/methods/test_targets.py holds the check).
    ["--method", "str", "--sparsity", "0.9", "--budget", "paper", "--set", "budget.calibration.sparsity_tolerance=0.95"],
    ["--method", "gmp", "--sparsity", "0.9", "--budget", "matched"],
    ["--method", "rigl", "--sparsity", "0.9", "--budget", "matched", "--set", "methods.rigl.update_interval=3"],
    ["--method", "str", "--sparsity", "0.9", "--budget", "matched", "--set", "budget.calibration.max_runs=2",
     "--set", "budget.calibration.sparsity_tolerance=0.95"],
]
#: Result fields that describe the machine or the moment, not what was computed.
SKIPPED_RESULT_KEYS = {"wall_time_s", "versions", "command", "numerics"}


def _numbers(value, prefix=""):
    """Flatten the numeric (and string) leaves of a result into {dotted.key: value}."""
    if isinstance(value, dict):
        out = {}
        for key in sorted(value):
            if not prefix and key in SKIPPED_RESULT_KEYS:
                continue
            out.update(_numbers(value[key], f"{prefix}{key}."))
        return out
    if isinstance(value, list):
        out = {}
        for index, item in enumerate(value):
            out.update(_numbers(item, f"{prefix}{index}."))
        return out
    return {prefix[:-1]: value}


def _run_commands(out: Path) -> None:
    """Every command, in this process (which must compute under portable numerics)."""
    from acdc_bench.cli import main

    for command in COMMANDS:
        args = ["run", "--suite", "fashion-mnist", "--out", str(out), "--no-progress", "--numerics", "portable",
                *command]
        for item in SHORT:
            args += ["--set", item]
        if main(args) != 0:
            raise RuntimeError(f"acdc-bench {' '.join(args)} failed")


def run_all(out: Path) -> dict:
    """Run every command into ``out`` in a fresh process with portable numerics pinned (one thread,
    so that the thread count cannot change a reduction); {run_id: {"metrics": rows, "result": flat numbers}}."""
    from acdc_bench.numerics import pinned_environment

    environment = dict(os.environ, **pinned_environment(), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    environment.pop("ACDC_BENCH_NUMERICS", None)
    done = subprocess.run([sys.executable, "-m", "tests.behaviour", "run", str(out)], cwd=ROOT, env=environment,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the behaviour runs failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    runs = {}
    for run_dir in sorted(p for p in out.iterdir() if (p / "result.json").exists()):
        with open(run_dir / "metrics.csv", newline="") as handle:
            rows = [{k: v for k, v in row.items() if k != "wall_time_s"} for row in csv.DictReader(handle)]
        result = json.loads((run_dir / "result.json").read_text())
        runs[run_dir.name] = {"metrics": rows, "result": _numbers(result)}
    return runs


def record(out: Path) -> None:
    from acdc_bench.numerics import PORTABLE_ENV, cpu_model

    runs = run_all(out)
    GOLDEN.write_text(json.dumps({"numerics": "portable", "environment": PORTABLE_ENV, "cpu": cpu_model(), "runs": runs},
                                 indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(runs)} runs under portable numerics -> {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"] and len(sys.argv) == 3:
        _run_commands(Path(sys.argv[2]))
    elif sys.argv[1:] == ["record"]:
        with tempfile.TemporaryDirectory() as tmp:
            record(Path(tmp))
    else:
        sys.exit("usage: python -m tests.behaviour record")
