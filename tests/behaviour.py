"""Short runs of every method whose metrics must not change when the code is refactored.

``python -m tests.behaviour record`` writes ``tests/data/behaviour.json`` from the current code;
``tests/test_behaviour.py`` re-runs the same commands and compares. Runs on one CPU type are
bit-for-bit deterministic; another CPU type (AMD EPYC vs Intel Xeon) gives slightly different
floating-point results, so there only the integer fields (steps, FLOPs of mask-based methods,
examples) are compared exactly and the rest within a loose tolerance.
"""

from __future__ import annotations

import csv
import json
import platform
import sys
from pathlib import Path

try:  # under pytest, tests/ is on sys.path
    from helpers import SHORT
except ImportError:  # python -m tests.behaviour
    from tests.helpers import SHORT

GOLDEN = Path(__file__).parent / "data" / "behaviour.json"
#: One line each: the ``acdc-bench run`` arguments (after ``--out``).
COMMANDS = [
    ["--method", "dense", "--sparsity", "0", "--budget", "paper"],
    ["--method", "acdc", "--sparsity", "0.9", "--budget", "paper"],
    ["--method", "gmp", "--sparsity", "0.9", "--budget", "paper"],
    ["--method", "rigl", "--sparsity", "0.9", "--budget", "paper", "--set", "methods.rigl.update_interval=3"],
    ["--method", "str", "--sparsity", "0.9", "--budget", "paper"],
    ["--method", "gmp", "--sparsity", "0.9", "--budget", "matched"],
    ["--method", "rigl", "--sparsity", "0.9", "--budget", "matched", "--set", "methods.rigl.update_interval=3"],
    ["--method", "str", "--sparsity", "0.9", "--budget", "matched", "--set", "budget.calibration.max_runs=2"],
]
SKIPPED_RESULT_KEYS = {"wall_time_s", "versions", "command"}


def cpu_name() -> str:
    """The CPU type as far as floating-point results go: its name, family and model, and the vector
    instructions torch's kernels use. The name alone is not enough: a hypervisor may call two
    generations "AMD EPYC", and they round differently (a record made on one failed on the other
    in the eighth significant digit)."""
    import torch

    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    return (f"{name} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, "
            f"torch {torch.backends.cpu.get_cpu_capability()})")


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


def run_all(out: Path) -> dict:
    """Run every command into ``out``; {run_id: {"metrics": rows, "result": flat numbers}}."""
    from acdc_bench.cli import main

    for command in COMMANDS:
        args = ["run", "--suite", "fashion-mnist", "--out", str(out), "--no-progress", *command]
        for item in SHORT:
            args += ["--set", item]
        if main(args) != 0:
            raise RuntimeError(f"acdc-bench {' '.join(args)} failed")
    runs = {}
    for run_dir in sorted(p for p in out.iterdir() if (p / "result.json").exists()):
        with open(run_dir / "metrics.csv", newline="") as handle:
            rows = [{k: v for k, v in row.items() if k != "wall_time_s"} for row in csv.DictReader(handle)]
        result = json.loads((run_dir / "result.json").read_text())
        runs[run_dir.name] = {"metrics": rows, "result": _numbers(result)}
    return runs


def record(out: Path) -> None:
    runs = run_all(out)
    GOLDEN.write_text(json.dumps({"cpu": cpu_name(), "runs": runs}, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(runs)} runs on {cpu_name()} -> {GOLDEN}")


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["record"]:
        sys.exit("usage: python -m tests.behaviour record")
    with tempfile.TemporaryDirectory() as tmp:
        record(Path(tmp))
