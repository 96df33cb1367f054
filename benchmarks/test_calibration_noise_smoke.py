"""benchmarks/calibration_noise.py runs, and its simulated chain behaves as the real one must."""

import calibration_noise as sim


def test_without_noise_and_with_the_true_jacobian_every_chain_lands_within_two_runs():
    stats = sim.simulate(sim.VARIANTS["current (calibrate.next_point)"], sim.PRIOR, (0.0, 0.0), chains=200, seed=0)
    assert stats["not_accepted"] == 0.0 and stats["mean_runs"] <= 2.0


def test_noise_near_the_tolerance_makes_chains_longer_for_every_variant():
    for propose in sim.VARIANTS.values():
        quiet = sim.simulate(propose, sim.OTHER, (0.002, 0.01), chains=200, seed=1)
        noisy = sim.simulate(propose, sim.OTHER, (0.01, 0.06), chains=200, seed=1)
        assert noisy["mean_runs"] > quiet["mean_runs"] and noisy["not_accepted"] > quiet["not_accepted"]
