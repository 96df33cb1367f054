"""Tests of acdc_bench.report.stats against numbers computed by hand (quantiles from tables).

t quantiles used: t_{0.975,1} = 12.706205, t_{0.975,2} = 4.302653; z_{0.975} = 1.959964.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from acdc_bench.report import stats


def test_mean_interval_three_seeds():
    # mean 89, s = 1, s/sqrt(3) = 0.577350, half-width 4.302653 * 0.577350 = 2.484138
    interval = stats.mean_interval([88.0, 89.0, 90.0])
    assert interval.estimate == pytest.approx(89.0)
    assert interval.low == pytest.approx(86.515862, abs=1e-6)
    assert interval.high == pytest.approx(91.484138, abs=1e-6)
    assert interval.half_width == pytest.approx(2.484138, abs=1e-6)
    assert interval.kind == "t over 3 seeds"


def test_mean_interval_needs_two_values():
    interval = stats.mean_interval([88.0])
    assert interval.estimate == 88.0 and not interval.known and interval.kind == "none: 1 seed"
    assert not stats.mean_interval([]).known


def test_binomial_interval_is_wilson():
    # 900 of 1000: p = 0.9, z^2/n = 0.003841; centre (0.9 + 0.001921) / 1.003841 = 0.898469,
    # half-width 1.959964 * sqrt(0.9 * 0.1 / 1000 + 1.959964^2 / (4 * 1000^2)) / 1.003841 = 0.018621
    interval = stats.binomial_interval(900, 1000)
    assert interval.estimate == pytest.approx(90.0)
    assert interval.low == pytest.approx(87.984804, abs=1e-5)
    assert interval.high == pytest.approx(91.709056, abs=1e-5)
    assert interval.kind.startswith("test-set binomial (Wilson), 1 seed") and stats.TEST_SET_ONLY in interval.kind


def test_paired_difference_clear_win_loss_and_tie():
    acdc = {0: 88.0, 1: 89.0, 2: 90.0}
    # win: differences 1.5, 1.3, 1.1 -> mean 1.3, s 0.2, half-width 4.302653 * 0.2 / sqrt(3) = 0.496828
    win = stats.paired_difference({0: 89.5, 1: 90.3, 2: 91.1}, acdc)
    assert (win.estimate, win.low, win.high) == pytest.approx((1.3, 0.803172, 1.796828), abs=1e-5)
    assert win.kind == "paired t over 3 seeds (0, 1, 2)" and stats.verdict(win) == stats.BETTER
    # loss: differences -2, -2.5, -2.5 -> mean -2.333333, s 0.288675, half-width 0.717109
    loss = stats.paired_difference({0: 86.0, 1: 86.5, 2: 87.5}, acdc)
    assert (loss.estimate, loss.low, loss.high) == pytest.approx((-2.333333, -3.050442, -1.616225), abs=1e-5)
    assert stats.verdict(loss) == stats.WORSE
    # tie: differences 2, -1, 1 -> mean 0.666667, s 1.527525, half-width 3.794583 (interval holds 0)
    tie = stats.paired_difference({0: 90.0, 1: 88.0, 2: 91.0}, acdc)
    assert (tie.estimate, tie.low, tie.high) == pytest.approx((0.666667, -3.127917, 4.461250), abs=1e-5)
    assert stats.verdict(tie) == stats.TIE


def test_paired_difference_uses_only_common_seeds():
    # common seeds 0 and 1: differences -2, -2.5 -> mean -2.25, s 0.353553, s/sqrt(2) = 0.25,
    # half-width 12.706205 * 0.25 = 3.176551; seed 2 (95.0) is left out
    difference = stats.paired_difference({0: 86.0, 1: 86.5, 2: 95.0}, {0: 88.0, 1: 89.0})
    assert (difference.estimate, difference.low, difference.high) == pytest.approx((-2.25, -5.426551, 0.926551),
                                                                                   abs=1e-5)
    assert difference.kind == "paired t over 2 seeds (0, 1)"
    one = stats.paired_difference({0: 86.0, 1: 86.5}, {1: 89.0, 2: 90.0})
    assert one.estimate == pytest.approx(-2.5) and not one.known and stats.verdict(one) == stats.NO_VERDICT
    assert one.kind == "none: 1 seed(s) in common"


def _binomial_tail(n: int, q: float, at_least: int) -> float:
    """P(X >= at_least) for X ~ Binomial(n, q), summed term by term."""
    return sum(math.comb(n, k) * q**k * (1 - q) ** (n - k) for k in range(at_least, n + 1))


def _mcnemar_arrays():
    """1000 examples; A right on 0-869 and 900-904 (875), B right on 0-899 (900).

    Discordant: only A 5 (900-904), only B 30 (870-899).
    """
    targets = np.arange(1000) % 10
    a, b = targets.copy(), targets.copy()
    a[870:900] = (a[870:900] + 1) % 10
    a[905:] = (a[905:] + 1) % 10
    b[900:] = (b[900:] + 1) % 10
    return targets, a, b


def test_mcnemar_exact_clear_difference():
    targets, a, b = _mcnemar_arrays()
    result = stats.mcnemar_exact(targets, a, b)
    assert (result.only_a, result.only_b, result.total) == (5, 30, 1000)
    # p = 2 * P(X <= 5), X ~ Bin(35, 1/2) = 2 * (1 + 35 + 595 + 6545 + 52360 + 324632) / 2^35
    #   = 2 * 384168 / 34359738368 = 2.236152e-5
    assert result.p_value == pytest.approx(2.236152e-5, rel=1e-5)
    assert stats.mcnemar_verdict(result) == stats.WORSE
    difference = result.difference
    assert difference.estimate == pytest.approx(87.5 - 90.0)
    assert difference.kind == f"McNemar exact, 1 seed: {stats.TEST_SET_ONLY}"
    # The interval is 100 * 35 / 1000 * (2q - 1) at A's exact (Clopper-Pearson) share bounds q of
    # the 35 discordant examples: P(X >= 5 | q_low) = 0.025 and P(X <= 5 | q_high) = 0.025.
    q_low, q_high = ((bound / 3.5 + 1) / 2 for bound in (difference.low, difference.high))
    assert _binomial_tail(35, q_low, 5) == pytest.approx(0.025, abs=1e-6)
    assert 1 - _binomial_tail(35, q_high, 6) == pytest.approx(0.025, abs=1e-6)
    assert difference.low < difference.estimate < difference.high < 0
    # Swapping A and B mirrors everything.
    swapped = stats.mcnemar_exact(targets, b, a)
    assert swapped.p_value == pytest.approx(result.p_value) and stats.mcnemar_verdict(swapped) == stats.BETTER
    assert (swapped.difference.low, swapped.difference.high) == pytest.approx((-difference.high, -difference.low))


def test_mcnemar_exact_tie_and_identical_models():
    targets = np.arange(100) % 10
    a, b = targets.copy(), targets.copy()
    a[:3] = (a[:3] + 1) % 10  # only B right on 0-2 (3), only A right on 3-8 (6)
    b[3:9] = (b[3:9] + 1) % 10
    result = stats.mcnemar_exact(targets, a, b)
    assert (result.only_a, result.only_b) == (6, 3)
    # p = 2 * P(X <= 3), X ~ Bin(9, 1/2) = 2 * (1 + 9 + 36 + 84) / 512 = 0.5078125
    assert result.p_value == pytest.approx(0.5078125)
    assert stats.mcnemar_verdict(result) == stats.TIE
    assert result.difference.low < 0 < result.difference.high and stats.verdict(result.difference) == stats.TIE
    same = stats.mcnemar_exact(targets, a, a)
    assert same.p_value == 1.0 and stats.mcnemar_verdict(same) == stats.TIE
    assert (same.difference.low, same.difference.high) == (0.0, 0.0)
    with pytest.raises(ValueError, match="one length"):
        stats.mcnemar_exact(targets, a[:-1], b)
