"""Matched budgets for methods whose cost and final sparsity emerge from training (STR).

GMP's and RigL's training FLOPs follow from their schedules, so a planner solves their
run length without training. STR has no schedule: its thresholds are learned, and
both its final sparsity and its cost (how early the weights become sparse) depend on
the run length *and* on its decay ``lambda``. Stretching STR to a larger budget with
the same ``lambda`` overshoots the target sparsity (Fashion-MNIST, 90% target:
20 epochs -> 0.894, 40 epochs -> 0.946) while its cost barely grows, because the
thresholds rise after the same number of steps.

So a matched STR run is calibrated by running it: two unknowns, ``x = (log steps,
log knob)`` (the knob is the method's ``calibration_option``, STR's ``lam``), two
measured residuals of a finished run,

    r = (log(training FLOPs / budget), logit(actual sparsity) - logit(target)),

solved with Broyden's method: the first point is the suite's shipped calibrated point
(``budget.calibration.start``) when it has one, else the suite's recipe at the length the
planner estimates; every finished run updates the Jacobian estimate (starting from
the method's ``calibration_jacobian``) and proposes the next point
``x - J^-1 r`` (each coordinate's move capped at a factor 3). The chain stops at the
first run whose FLOPs are within :data:`acdc_bench.budget.plan.MATCH_TOLERANCE` of the budget
and whose sparsity is within ``budget.calibration.sparsity_tolerance`` of the
target, or after ``max_runs`` runs. Every run of the chain is a real, finished run in
the output folder (the chain is re-derived from them, so an interrupted reproduction
resumes it); its ``result.json`` records its place in the chain, and the comparison
tables use the chain's last run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Largest move of one Broyden step in each coordinate (log steps, log knob): a factor 3.
MAX_LOG_STEP = math.log(3.0)


def describe(budget: dict | None, steps: int) -> str:
    """'budget calibration run i of at most n: S steps, lam=V' for a run of a chain, else ''."""
    calibration = (budget or {}).get("calibration")
    if not calibration:
        return ""
    return (f"budget calibration run {calibration['iteration'] + 1} of at most {calibration['max_runs']}: "
            f"{steps} steps, {calibration['option']}={calibration['value']:.4g}")


@dataclass(frozen=True)
class Observation:
    """One finished run of the chain: where it ran and what it measured."""

    steps: int
    knob: float
    training_flops: float
    sparsity: float
    run_id: str = ""

    @property
    def x(self) -> tuple[float, float]:
        return math.log(self.steps), math.log(self.knob)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1.0 - 1e-6)
    return math.log(p / (1.0 - p))


def residual(obs: Observation, budget: float, target: float) -> tuple[float, float]:
    """(log(FLOPs / budget), logit(sparsity) - logit(target)): zero at the calibrated point."""
    return math.log(obs.training_flops / budget), _logit(obs.sparsity) - _logit(target)


def within_tolerance(obs: Observation, budget: float, target: float, flops_tolerance: float,
                     sparsity_tolerance: float) -> bool:
    return abs(obs.training_flops / budget - 1.0) <= flops_tolerance and abs(obs.sparsity - target) <= sparsity_tolerance


def _solve(jacobian, rhs) -> tuple[float, float] | None:
    (a, b), (c, d) = jacobian
    det = a * d - b * c
    if not math.isfinite(det) or abs(det) < 1e-12:
        return None
    return (d * rhs[0] - b * rhs[1]) / det, (a * rhs[1] - c * rhs[0]) / det


def broyden_jacobian(observations: list[Observation], budget: float, target: float, initial) -> list[list[float]]:
    """The Jacobian estimate after Broyden's ("good") update for each consecutive pair of runs."""
    jacobian = [list(map(float, row)) for row in initial]
    for before, after in zip(observations, observations[1:]):
        dx = [after.x[i] - before.x[i] for i in range(2)]
        r0, r1 = residual(before, budget, target), residual(after, budget, target)
        dr = [r1[i] - r0[i] for i in range(2)]
        norm = dx[0] ** 2 + dx[1] ** 2
        if norm < 1e-18:
            continue
        predicted = [jacobian[i][0] * dx[0] + jacobian[i][1] * dx[1] for i in range(2)]
        for i in range(2):
            for j in range(2):
                jacobian[i][j] += (dr[i] - predicted[i]) * dx[j] / norm
    return jacobian


def next_point(observations: list[Observation], budget: float, target: float, initial_jacobian,
               min_steps: int = 1) -> tuple[int, float, float]:
    """The next (steps, knob) of the chain and the FLOPs the model predicts for it: a step from the
    last run with the Broyden-updated Jacobian (see :func:`step_from`)."""
    jacobian = broyden_jacobian(observations, budget, target, initial_jacobian)
    return step_from(observations[-1], jacobian, budget, target, initial_jacobian, min_steps)


def step_from(last: Observation, jacobian, budget: float, target: float, initial_jacobian,
              min_steps: int = 1) -> tuple[int, float, float]:
    """The (steps, knob) that ``jacobian`` predicts zeroes ``last``'s residual, each coordinate's move
    capped at :data:`MAX_LOG_STEP`, and the FLOPs predicted there. A singular ``jacobian`` falls back
    to ``initial_jacobian``."""
    r = residual(last, budget, target)
    move = _solve(jacobian, (-r[0], -r[1]))
    if move is None:
        jacobian = [list(map(float, row)) for row in initial_jacobian]
        move = _solve(jacobian, (-r[0], -r[1]))
    if move is None:
        raise ValueError(f"calibration_jacobian {initial_jacobian!r} is singular; give an invertible 2x2 matrix")
    move = tuple(max(-MAX_LOG_STEP, min(MAX_LOG_STEP, m)) for m in move)
    log_steps, log_knob = last.x[0] + move[0], last.x[1] + move[1]
    predicted_log_ratio = r[0] + jacobian[0][0] * move[0] + jacobian[0][1] * move[1]
    steps = max(int(min_steps), int(round(math.exp(log_steps))))
    return steps, math.exp(log_knob), budget * math.exp(predicted_log_ratio)
