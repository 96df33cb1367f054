"""Training-FLOP budgets: ``paper`` (each method's own recipe length) or ``matched`` to a reference run.

Under ``budget: matched`` a method's run length (in optimizer steps; with it its lr,
pruning and update schedules) is solved so that its estimated training FLOPs equal
the reference's: the finished reference run's measured FLOPs when it exists in the
output folder, else the reference's own estimate. The run records the budget it ran
under, and its result the achieved ratio of measured FLOPs to that budget.
"""

from __future__ import annotations

import math
from pathlib import Path

from acdc_bench.config import run_config

#: Methods that always run their own length: the dense baseline is the unit of every multiplier.
UNMATCHED = {"dense"}


def reference_training_flops(suite: dict, sparsity: float, seed: int, out: Path | None) -> tuple[float, str]:
    """The budget: a finished reference run's measured FLOPs, else the reference's estimate."""
    from acdc_bench.plan import Planner
    from acdc_bench.train import read_result

    reference = suite["budget"].get("reference", "acdc")
    config = run_config(suite, reference, sparsity, seed, budget={"mode": "paper", "reference_training_flops": None})
    if out is not None:
        finished = read_result(Path(out) / config["run_id"])
        if finished is not None:
            return float(finished["training_flops"]), f"measured by run {config['run_id']}"
    return Planner(config).estimated_training_flops(), f"estimated for {reference} (run {config['run_id']} not found)"


def resolve_budget(
    suite: dict,
    method: str,
    sparsity: float,
    seed: int,
    mode: str,
    epochs: int | None = None,
    out: Path | None = None,
) -> dict:
    """The run config of ``method`` under the budget ``mode`` (``paper`` or ``matched``)."""
    from acdc_bench.plan import Planner, solve_matched_steps

    reference = suite["budget"].get("reference", "acdc")
    if mode == "paper" or method in UNMATCHED or method == reference or epochs is not None:
        note = None if mode == "paper" else ("explicit --epochs" if epochs is not None else f"{method} runs its own length")
        return run_config(suite, method, sparsity, seed, epochs=epochs,
                          budget={"mode": "paper", "reference_training_flops": None, "note": note})
    budget_flops, source = reference_training_flops(suite, sparsity, seed, out)
    planner = Planner(run_config(suite, method, sparsity, seed))
    steps, estimate = solve_matched_steps(planner, budget_flops)
    budget = {
        "mode": "matched",
        "reference": reference,
        "reference_training_flops": budget_flops,
        "reference_source": source,
        "estimated_training_flops": estimate,
        "estimated_ratio": estimate / budget_flops,
    }
    epochs_needed = math.ceil(steps / planner.steps_per_epoch)
    return run_config(suite, method, sparsity, seed, epochs=epochs_needed, budget=budget, train_steps=steps)
