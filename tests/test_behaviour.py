"""Refactors keep behaviour: short runs of every method give the metrics recorded before.

The record (``tests/data/behaviour.json``) was made with ``python -m tests.behaviour record``
before the library refactor of issue 10, and re-made from unchanged code when its CPU type
became more specific (an "AMD EPYC" of another generation rounded differently: 109 of 867
values moved, none by more than 1e-4 relative). On the CPU type that recorded it the runs
are deterministic, so every number must be equal; on another CPU type floating-point results
differ slightly, so only the exact integer bookkeeping is held to equality there.
"""

import json
import math

import pytest

from behaviour import GOLDEN, cpu_name, run_all
from helpers import needs_fashion

#: Fields that are exact integers whatever the CPU (schedules, masks' FLOPs, counts).
EXACT_ANYWHERE = ("epoch", "phase", "lr", "steps", "examples_seen", "train_steps", "epochs", "suite_epochs",
                  "dense_training_flops", "dense_inference_flops", "target_sparsity", "seed", "world_size")


def _close(a, b, exact: bool) -> bool:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return a == b
    if math.isnan(a) and math.isnan(b):
        return True
    return a == b if exact else math.isclose(a, b, rel_tol=0.05, abs_tol=2.0)


@needs_fashion
@pytest.mark.slow
def test_short_runs_of_every_method_match_the_record(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    same_cpu = golden["cpu"] == cpu_name()
    runs = run_all(tmp_path)
    assert sorted(runs) == sorted(golden["runs"]), "run ids changed: the resolved configs differ"
    mismatches = []
    for run_id, expected in golden["runs"].items():
        got = runs[run_id]
        assert len(got["metrics"]) == len(expected["metrics"]), run_id
        pairs = [(f"metrics[{i}].{k}", row.get(k), v) for i, (row, exp) in enumerate(zip(got["metrics"], expected["metrics"]))
                 for k, v in exp.items()]
        pairs += [(f"result.{k}", got["result"].get(k), v) for k, v in expected["result"].items()]
        for name, value, want in pairs:
            exact = same_cpu or name.rsplit(".", 1)[-1] in EXACT_ANYWHERE
            if not _close(value, want, exact):
                mismatches.append(f"{run_id} {name}: {value!r} != recorded {want!r}")
    assert not mismatches, "\n".join(mismatches[:30])
