"""Per-step time of each method against the plain dense PyTorch step, on two workloads.

Scenarios: ``torch-dense`` (the reference: forward, backward, ``optimizer.step``),
``dense`` (the Dense method through the hooks), AC/DC in a compressed and in a
decompressed phase, GMP between mask updates, RigL on a normal step and on an update
step (the table amortises them over dT), STR.

Before each timed round, a plain dense step on a second model of the same architecture,
batch and optimizer is timed (untimed set-up of the round), and one more after the last:
each round's method step is divided by the mean of the dense steps just before and after
it, under the same machine load; the table reports the median of these ratios (and,
beside it, the ratio of the minima against the ``torch-dense`` benchmark).
"""

from __future__ import annotations

import pytest

from _harness import (
    REFERENCE,
    SCENARIOS,
    WORKLOADS,
    Stepper,
    count_flop_counter_passes,
    method_available,
    record,
    reference_step,
)

CASES = [(workload, scenario) for workload in WORKLOADS for scenario in SCENARIOS]


@pytest.mark.parametrize("workload, scenario", CASES, ids=[f"{w}-{s}" for w, s in CASES])
def test_step(benchmark, workload, scenario):
    method = SCENARIOS[scenario]
    if not method_available(method):
        pytest.skip(f"method '{method}' is not registered (yet)")
    spec = WORKLOADS[workload]
    stepper = Stepper(spec, scenario, paired=True)
    benchmark.group = f"step {workload}: {spec.label}"
    benchmark.extra_info.update(workload=workload, label=spec.label, scenario=scenario,
                                step_index=stepper.step_index)
    setup = stepper.time_reference if stepper.reference is not None else None
    with count_flop_counter_passes() as passes:
        benchmark.pedantic(stepper.step, setup=setup, rounds=spec.rounds, warmup_rounds=spec.warmup)
    assert passes[0] == 0, "the FLOP meter must not run a FlopCounterMode pass per step"
    if stepper.reference is not None and getattr(benchmark, "stats", None) is not None:
        stepper.time_reference()  # the dense step after the last round
    values = {}
    if scenario == "rigl-update":
        values["update_interval"] = stepper.method.config.update_interval
        benchmark.extra_info["update_interval"] = values["update_interval"]
    hooks = stepper.measured_hook_times(spec.warmup) if stepper.method is not None else None
    if stepper.method is not None:
        meter = stepper.meter_times[spec.warmup:] or stepper.meter_times
        values["meter_in_step_median"] = sorted(meter)[len(meter) // 2]
        benchmark.extra_info["meter_in_step_median_s"] = values["meter_in_step_median"]
    reference = stepper.measured_reference_times(spec.warmup) if stepper.reference is not None else None
    entry = record(benchmark, "step", workload, scenario, hooks, reference, **values)
    ref = reference_step(workload)
    if entry is not None and ref is not None and scenario != REFERENCE:
        benchmark.extra_info["ratio_of_minima_vs_dense"] = entry.min / ref.min
