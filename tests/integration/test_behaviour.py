"""Refactors keep behaviour: short runs of every method give the metrics recorded before.

The record (``tests/data/behaviour.json``, ``python -m tests.behaviour record``) was made under
portable numerics, which give the same floats on Intel and AMD x86-64 CPUs with AVX2: every
number, every metrics row and every run id must be equal, on any such CPU (the record names the
CPU it was made on, so that a difference says which two CPUs disagree).
"""

import json
import math

import pytest

from behaviour import GOLDEN, run_all
from acdc_bench.numerics import cpu_model
from helpers import needs_fashion


def _equal(a, b) -> bool:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return a == b
    return (math.isnan(a) and math.isnan(b)) or a == b


@needs_fashion
@pytest.mark.slow
def test_short_runs_of_every_method_match_the_record(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    runs = run_all(tmp_path)
    assert sorted(runs) == sorted(golden["runs"]), "run ids changed: the resolved configs differ"
    mismatches = []
    for run_id, expected in golden["runs"].items():
        got = runs[run_id]
        assert len(got["metrics"]) == len(expected["metrics"]), run_id
        pairs = [(f"metrics[{i}].{k}", row.get(k), v) for i, (row, exp) in enumerate(zip(got["metrics"], expected["metrics"]))
                 for k, v in exp.items()]
        pairs += [(f"result.{k}", got["result"].get(k), v) for k, v in expected["result"].items()]
        mismatches += [f"{run_id} {name}: {value!r} != recorded {want!r}" for name, value, want in pairs
                       if not _equal(value, want)]
    assert not mismatches, (f"{len(mismatches)} values differ between this CPU ({cpu_model()}) and the record's "
                            f"({golden.get('cpu')}):\n" + "\n".join(mismatches[:30]))
