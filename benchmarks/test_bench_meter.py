"""The training-FLOP meter's cost per step: ``meter.add(method.step_training_flops(step), batch)``.

Before each timed call the method's ``before_optimizer_step`` runs (untimed), as in a
training step: STR counts the effective weights' non-zeros there, and that count is what
its ``step_training_flops`` reads. The table divides by the plain dense step.
"""

from __future__ import annotations

import pytest

from _harness import SCENARIOS, SHORT, WORKLOADS, Stepper, count_flop_counter_passes, method_available, record

METERED = ["dense", "acdc-compressed", "gmp", "rigl", "str"]
CASES = [(workload, scenario) for workload in WORKLOADS for scenario in METERED]


@pytest.mark.parametrize("workload, scenario", CASES, ids=[f"{w}-{s}" for w, s in CASES])
def test_meter(benchmark, workload, scenario):
    if not method_available(SCENARIOS[scenario]):
        pytest.skip(f"method '{SCENARIOS[scenario]}' is not registered (yet)")
    spec = WORKLOADS[workload]
    stepper = Stepper(spec, scenario)
    method, step = stepper.method, stepper.step_index
    benchmark.group = f"meter {workload}: {spec.label}"
    benchmark.extra_info.update(workload=workload, label=spec.label, scenario=scenario)
    rounds = 30 if SHORT or workload == "resnet50" else 300
    def before_optimizer_step():  # untimed, as in a step: STR counts its non-zeros here
        method.before_optimizer_step(step)

    with count_flop_counter_passes() as passes:
        benchmark.pedantic(stepper.meter_step, setup=before_optimizer_step, rounds=rounds, warmup_rounds=3)
    assert passes[0] == 0, "the FLOP meter must not run a FlopCounterMode pass per step"
    record(benchmark, "meter", workload, scenario)
