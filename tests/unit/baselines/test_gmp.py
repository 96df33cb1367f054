"""GMP (Zhu and Gupta; Gale et al.'s recipe) pinned against hand-computed values.

Each method is driven through the same hook order as :func:`acdc_bench.run.loop.train`
(``on_step_start``, forward, backward, ``before_optimizer_step`` -> maybe step,
``after_optimizer_step``, ``step_training_flops``) on tiny models (``tests/helpers.py``).
"""

from __future__ import annotations


import pytest
import torch

from acdc_bench.methods import make_config
from acdc_bench.core.sparsity import global_magnitude_masks
from acdc_bench.baselines.gmp import GMP, cubic_sparsity

from helpers import attach, make_optimizer, nonzeros, tiny_mlp, train_step


def test_gmp_cubic_schedule_values():
    # t0 = 200, t1 = 800 of 1000 steps; s_f = 0.9.
    assert cubic_sparsity(100, 0.9, 200, 800) == 0.0
    assert cubic_sparsity(200, 0.9, 200, 800) == 0.0
    assert cubic_sparsity(500, 0.9, 200, 800) == pytest.approx(0.9 * (1 - 0.5 ** 3))  # 0.7875
    assert cubic_sparsity(350, 0.9, 200, 800) == pytest.approx(0.9 * (1 - 0.75 ** 3))  # 0.5203125
    assert cubic_sparsity(800, 0.9, 200, 800) == pytest.approx(0.9)
    assert cubic_sparsity(950, 0.9, 200, 800) == pytest.approx(0.9)


def test_gmp_defaults_scale_gales_schedule():
    config = make_config(GMP, {})
    assert config.distribution == "uniform"
    gale = GMP(config, target_sparsity=0.9, epochs=102, steps_per_epoch=1255, total_steps=128_000)
    assert (gale.start_step, gale.end_step, gale.frequency) == (40_000, 99_840, 2_000)
    # Fashion-MNIST suite: 20 epochs x 235 steps.
    small = GMP(config, target_sparsity=0.9, epochs=20, steps_per_epoch=235)
    assert (small.start_step, small.end_step, small.frequency) == (1469, 3666, 73)
    with pytest.raises(ValueError, match="keep_dense"):
        make_config(GMP, {"distribution": "global", "keep_dense": ["conv1"]})
    keep = attach("gmp", {"keep_dense": ["0"], "start_fraction": 0.0, "end_fraction": 0.5}, tiny_mlp())
    keep.on_step_start(50)
    assert keep.masks.nonzeros == [600, 30]
    with pytest.raises(ValueError, match="start_fraction"):
        make_config(GMP, {"start_fraction": 0.8, "end_fraction": 0.5})


def test_gmp_masks_follow_schedule_and_change_only_every_frequency_steps():
    model = tiny_mlp()
    method = attach("gmp", {"start_fraction": 0.2, "end_fraction": 0.6, "frequency": 7}, model, total_steps=100)
    assert (method.start_step, method.end_step) == (20, 60)
    optimizer = make_optimizer(method, model)
    expected_updates = [20, 27, 34, 41, 48, 55, 60]
    assert method.schedule.change_steps() == expected_updates
    calls = []
    original = method.prune_by_magnitude
    method.prune_by_magnitude = lambda s: (calls.append(s), original(s))[1]
    for step in range(100):
        before = [m.clone() for m in method.masks.masks]
        train_step(method, model, optimizer, step)
        changed = any(not torch.equal(a, b) for a, b in zip(before, method.masks.masks))
        if changed:
            assert step in expected_updates
        in_force = method.schedule.in_force(step).sparsity
        expected = [n - round((1 - in_force) * n) for n in (600, 300)]
        assert [layer.numel - k for layer, k in zip(method.layers, method.masks.nonzeros)] == expected
        # Pruned weights are zero after every step (masked gradients and re-applied masks).
        assert all(int(torch.count_nonzero(l.weight[~m])) == 0 for l, m in zip(method.layers, method.masks.masks))
    assert len(calls) == len(expected_updates)
    assert calls == pytest.approx([cubic_sparsity(t, 0.9, 20, 60) for t in expected_updates])
    assert calls[-1] == 0.9
    # Final sparsity exact: 60 of 600 and 30 of 300 weights kept.
    assert method.masks.nonzeros == [60, 30]
    assert method.masks.sparsity() == pytest.approx(0.9, abs=1e-12)
    assert sum(nonzeros(method.layers)) <= 90


def test_gmp_global_distribution_and_planning_match_the_meter():
    model = tiny_mlp()
    method = attach("gmp", {"distribution": "global", "start_fraction": 0.2, "end_fraction": 0.6, "frequency": 7},
                    model, total_steps=100, steps_per_epoch=10)
    densities = method.planned_densities(9)
    kept = sum(d * layer.numel for d, layer in zip(densities, method.layers))
    assert kept == pytest.approx(90, abs=1)
    expected = [float(m.float().mean()) for m in global_magnitude_masks([l.weight for l in method.layers], 0.9)]
    assert densities == pytest.approx(expected)
    again = attach("gmp", {"distribution": "global"}, model, total_steps=100)  # a re-plan (cached magnitudes)
    assert again.densities_at(0.9) == pytest.approx(expected)
    with torch.no_grad():
        model[0].weight.mul_(10.0)  # in place: the cache must not be reused
    assert again.densities_at(0.5) == pytest.approx(
        [float(m.float().mean()) for m in global_magnitude_masks([l.weight for l in method.layers], 0.5)])

    model = tiny_mlp()
    method = attach("gmp", {"start_fraction": 0.2, "end_fraction": 0.6, "frequency": 7}, model,
                    total_steps=95, steps_per_epoch=10)
    planned = [method.planned_training_flops_per_example(e) for e in range(10)]
    optimizer = make_optimizer(method, model)
    measured = [0] * 10
    for step in range(95):
        measured[step // 10] += train_step(method, model, optimizer, step)[1]
    steps = [10] * 9 + [5]
    for epoch in range(10):
        # Planned from densities, measured from whole non-zero counts: at most half a weight per layer apart.
        assert planned[epoch] == pytest.approx(measured[epoch] / steps[epoch], abs=3 * 2 * 0.5 * 2)
    assert method.planned_densities(0) == [1.0, 1.0]
    assert method.planned_densities(9) == pytest.approx([0.1, 0.1])


def test_gmp_state_dict_round_trip():
    model = tiny_mlp()
    options = {"start_fraction": 0.2, "end_fraction": 0.6, "frequency": 7}
    method = attach("gmp", options, model)
    optimizer = make_optimizer(method, model)
    for step in range(45):
        train_step(method, model, optimizer, step)
    state = method.state_dict()
    resumed = attach("gmp", options, model)
    resumed.load_state_dict(state)
    assert resumed.masking and resumed.masks.nonzeros == method.masks.nonzeros
    assert all(torch.equal(a, b) for a, b in zip(resumed.masks.masks, method.masks.masks))
    other = attach("gmp", {"start_fraction": 0.1, "end_fraction": 0.6, "frequency": 7}, model)
    with pytest.raises(ValueError, match="schedule"):
        other.load_state_dict(state)
