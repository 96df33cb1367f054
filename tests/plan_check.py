"""``plan`` and ``run`` describe the same run: a finished run's ``metrics.csv`` against ``plan``'s rows."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from acdc_bench.budget.plan import Planner, plan
from acdc_bench.methods import get_method
from acdc_bench.testing import whole_weight_slack

#: Both sides compute the learning rate in float64 from one formula, in at most a few operations.
LR_RELATIVE = 8 * torch.finfo(torch.float64).eps


def assert_plan_matches_run(config: dict, run_dir: Path, num_classes: int | None = None) -> None:
    """Per epoch: the phase, the learning rate, and, for a method that holds its target by
    construction, the sparsity of the masks in force and the epoch's training FLOPs.

    The planner lays a layer's density out as a fraction (``d``), the masks keep whole weights, so
    a layer's kept count differs from ``d * n`` by less than one weight, and the meter counts
    ``floor(f / n)`` FLOPs per weight where the plan counts ``d * f``: per example and step the
    two differ by at most ``sum_l (f_l // n_l + f_l % n_l)`` forward FLOPs (x 3 for training). The
    mask sparsity is compared at the epoch's middle step (the plan's) and its end (the run's):
    the runs that use this check take one step per epoch, or hold one mask through an epoch.
    STR's sparsity and cost emerge from training: only its phase and lr are planned.
    ``num_classes``: the class count of the run's data where it is not the model's registered one."""
    report = plan(config, num_classes)
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(report["rows"]) == report["epochs"], (len(rows), report["epochs"])
    planner = Planner(config, num_classes)
    flops = planner.flops
    total = sum(flops.numels)
    per_example = whole_weight_slack(flops)
    promises = get_method(planner.config.method).sparsity_tolerance is not None
    before = 0.0
    for planned, measured in zip(report["rows"], rows):
        epoch = planned["epoch"]
        assert measured["phase"] == planned["phase"], (epoch, measured["phase"], planned["phase"])
        assert abs(float(measured["lr"]) - planned["lr"]) <= LR_RELATIVE * abs(planned["lr"]), (epoch, measured["lr"], planned["lr"])
        spent = float(measured["training_flops"]) - before
        before = float(measured["training_flops"])
        if promises:
            layers = len(flops.numels)
            assert abs(float(measured["mask_sparsity"]) - planned["target_sparsity"]) <= layers / total, \
                (epoch, measured["mask_sparsity"], planned["target_sparsity"])
            bound = 3 * per_example * planner.epoch_examples(epoch)
            assert abs(spent - planned["training_flops"]) <= bound, (epoch, spent, planned["training_flops"], bound)
