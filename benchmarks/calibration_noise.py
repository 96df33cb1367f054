"""Would a noise-aware step shorten STR's calibration chains? A simulation of the chain.

    python benchmarks/calibration_noise.py [--chains 4000] [--seed 0]

STR's final sparsity and cost respond to (log steps, log lambda) roughly linearly near the
calibrated point, but every run adds noise: a move of lambda's fifth digit moved a 90% run's
sparsity by 0.3 pp, and seeds differ by about 2 pp at one point. This script runs the chain of
:mod:`acdc_bench.budget.calibrate` (the ``current`` variant: its own ``next_point``) on a
simulated response (a true Jacobian, a random offset per chain for the seed, Gaussian noise on
every run) against three alternatives, with the real tolerances (2% FLOPs, 0.5 pp sparsity at a
90% target) and at most 5 runs, and prints the mean runs per accepted chain, the share that
needed 3 or more, and the share not accepted in 5. The README's "Timing of the default
reproduction" quotes it. Pure Python: a few seconds.
"""

from __future__ import annotations

import argparse
import math
import random

from acdc_bench.budget.calibrate import (Observation, _logit, broyden_jacobian, next_point, residual, step_from,
                                         within_tolerance)
from acdc_bench.methods import get_method, make_config

#: STR's shipped ``calibration_jacobian`` (the prior every chain starts from).
PRIOR = get_method("str").calibration_jacobian(make_config(get_method("str"), {}))
#: A true response 20-40% off the prior, each entry.
OTHER = [[0.3, -0.9], [1.3, 2.6]]
FLOPS_TOLERANCE, SPARSITY_TOLERANCE, TARGET, MAX_RUNS = 0.02, 0.005, 0.9, 5


def _jacobian_skipping_small_moves(observations, initial, smallest: float):
    jacobian = [list(row) for row in initial]
    for before, after in zip(observations, observations[1:]):
        if math.dist(before.x, after.x) >= smallest:
            jacobian = broyden_jacobian([before, after], 1.0, TARGET, jacobian)
    return jacobian


def _score(obs: Observation) -> float:
    r = residual(obs, 1.0, TARGET)
    return max(abs(r[0]) / FLOPS_TOLERANCE, abs(obs.sparsity - TARGET) / SPARSITY_TOLERANCE)


VARIANTS = {
    "current (calibrate.next_point)": lambda obs, initial: next_point(obs, 1.0, TARGET, initial),
    "skip updates after moves < 0.06": lambda obs, initial: step_from(
        obs[-1], _jacobian_skipping_small_moves(obs, initial, 0.06), 1.0, TARGET, initial),
    "step from the best run so far": lambda obs, initial: step_from(
        min(obs, key=_score), broyden_jacobian(obs, 1.0, TARGET, initial), 1.0, TARGET, initial),
    "keep the prior Jacobian": lambda obs, initial: step_from(obs[-1], initial, 1.0, TARGET, initial),
}


def chain_length(propose, true_jacobian, offset, noise, rng) -> int | None:
    """Runs until the chain accepts one (None: not within MAX_RUNS)."""
    x0 = (math.log(4482), math.log(0.004))

    def observe(steps: int, knob: float) -> Observation:
        dx = (math.log(steps) - x0[0], math.log(knob) - x0[1])
        r = [offset[i] + true_jacobian[i][0] * dx[0] + true_jacobian[i][1] * dx[1] + rng.gauss(0.0, noise[i])
             for i in range(2)]
        return Observation(steps, knob, math.exp(r[0]), 1 / (1 + math.exp(-(r[1] + _logit(TARGET)))))

    observations = [observe(4482, 0.004)]
    for runs in range(1, MAX_RUNS + 1):
        if within_tolerance(observations[-1], 1.0, TARGET, FLOPS_TOLERANCE, SPARSITY_TOLERANCE):
            return runs
        if runs < MAX_RUNS:
            steps, knob, _ = propose(observations, PRIOR)
            observations.append(observe(steps, knob))
    return None


def simulate(propose, true_jacobian, noise, chains: int, seed: int) -> dict:
    rng = random.Random(seed)
    # a seed's offset at the shipped point: about 8% in FLOPs, about 2 pp of sparsity at 90%
    lengths = [chain_length(propose, true_jacobian, (rng.gauss(0, 0.08), rng.gauss(0, 0.25)), noise, rng)
               for _ in range(chains)]
    accepted = [n for n in lengths if n is not None]
    return {"mean_runs": sum(accepted) / max(1, len(accepted)),
            "three_or_more": sum(n >= 3 for n in accepted) / chains,
            "not_accepted": (chains - len(accepted)) / chains}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, true_jacobian in (("the prior", PRIOR), ("20-40% off the prior", OTHER)):
        for noise in ((0.005, 0.02), (0.01, 0.04), (0.01, 0.06)):
            print(f"true Jacobian {name}; noise: log FLOPs {noise[0]}, logit sparsity {noise[1]}")
            for label, propose in VARIANTS.items():
                s = simulate(propose, true_jacobian, noise, args.chains, args.seed)
                print(f"  {label:<34} mean runs {s['mean_runs']:.2f}  3+ runs {s['three_or_more']:.3f}  "
                      f"not accepted in {MAX_RUNS}: {s['not_accepted']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
