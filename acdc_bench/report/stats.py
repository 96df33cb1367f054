"""Confidence intervals and verdicts for comparing results: can we tell two methods apart?

Every distribution comes from :mod:`scipy.stats`; the functions here only pick the right
one and turn its numbers into an :class:`Interval` or a verdict. They are pure (no I/O).

- :func:`mean_interval`: mean over seeds with its t-interval,
  ``mean ± t_{(1+c)/2, n-1} · s / sqrt(n)`` (``scipy.stats.t``). It covers what changes
  from seed to seed (initialisation, data order) and, because each seed is scored on the
  test set, the test-set sampling too.
- :func:`binomial_interval`: one seed's accuracy, ``correct`` of ``total`` test examples,
  with the Wilson score interval (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``).
  It covers test-set sampling only: another seed may land outside it.
- :func:`paired_difference`: method minus baseline, paired by seed (only the seeds both
  have), with the t-interval of the mean per-seed difference.
- :func:`mcnemar_exact`: McNemar's exact test on two models' predictions for the same test
  examples: a two-sided binomial test (p = 1/2) on the discordant examples, those exactly
  one of the two classifies correctly (``scipy.stats.binomtest``). Its interval for the
  accuracy difference is the exact (Clopper-Pearson) interval of the discordant split,
  scaled to accuracy points, so it excludes 0 exactly when the test rejects at 1 - c.
- :func:`verdict`: ``better`` / ``worse`` / ``tie`` from an interval of a difference
  (``tie`` when it contains 0); :func:`mcnemar_verdict` the same from the test at ``alpha``.

Accuracies are in percent (0-100) throughout, like ``top1`` in ``result.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
BETTER, WORSE, TIE, NO_VERDICT = "better", "worse", "tie", "n/a"
#: What a one-seed interval or verdict covers; appended to its label.
TEST_SET_ONLY = "test-set sampling only"


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval; ``low``/``high`` are NaN when there is none.

    ``kind`` says how it was computed (``"t over 3 seeds"``, ``"test-set binomial (Wilson),
    1 seed"``, ...) or why there is no interval.
    """

    estimate: float
    low: float
    high: float
    kind: str

    @property
    def known(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean of ``values`` (one per seed) with its t-interval; no interval below two values.

    Three seeds at 95%: ``mean ± t_{0.975, 2} · s / sqrt(3)`` with ``t_{0.975, 2} = 4.302653``.
    """
    values = np.asarray(values, dtype=float)
    count = len(values)
    mean = float(values.mean()) if count else math.nan
    if count < 2:
        return Interval(mean, math.nan, math.nan, f"none: {count} seed{'s' if count != 1 else ''}")
    half_width = stats.t.ppf((1 + confidence) / 2, df=count - 1) * values.std(ddof=1) / math.sqrt(count)
    return Interval(mean, mean - half_width, mean + half_width, f"t over {count} seeds")


def binomial_interval(correct: int, total: int, confidence: float = CONFIDENCE) -> Interval:
    """Accuracy ``100 · correct / total`` of one run with the Wilson score interval (percent).

    The interval covers test-set sampling only (which examples the test set happens to hold),
    not seed-to-seed variation.
    """
    if total <= 0:
        return Interval(math.nan, math.nan, math.nan, "none: empty test set")
    ci = stats.binomtest(int(correct), int(total)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(100 * correct / total, 100 * ci.low, 100 * ci.high,
                    f"test-set binomial (Wilson), 1 seed: {TEST_SET_ONLY}")


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float],
                      confidence: float = CONFIDENCE) -> Interval:
    """Mean of ``values[seed] - baseline[seed]`` over the seeds both have, with its t-interval.

    Seeds only one side has are left out: pairing removes what the two runs of a seed share.
    The ``kind`` names the paired seeds, e.g. ``"paired t over 3 seeds (0, 1, 2)"``.
    """
    seeds = sorted(set(values) & set(baseline))
    interval = mean_interval([values[seed] - baseline[seed] for seed in seeds], confidence)
    if not interval.known:
        return Interval(interval.estimate, math.nan, math.nan, f"none: {len(seeds)} seed(s) in common")
    seed_list = ", ".join(f"{seed:g}" for seed in seeds)
    return Interval(interval.estimate, interval.low, interval.high, f"paired {interval.kind} ({seed_list})")


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of model A against model B on the same test examples.

    ``only_a``: examples A classifies correctly and B does not; ``only_b`` the reverse.
    ``difference`` is A's accuracy minus B's (points) with its exact conditional interval.
    """

    only_a: int
    only_b: int
    total: int
    p_value: float
    difference: Interval


def mcnemar_exact(targets, predictions_a, predictions_b, confidence: float = CONFIDENCE) -> McNemar:
    """McNemar's exact test: ``binomtest(only_a, only_a + only_b, p=0.5)``, two-sided.

    Under "A and B are equally accurate" each discordant example is A's with probability 1/2.
    The accuracy difference is ``100 · (only_a - only_b) / total``; given the number of
    discordant examples ``m``, it is ``100 · m · (2q - 1) / total`` for A's share ``q`` of
    them, so the exact (Clopper-Pearson) interval of ``q`` maps onto an interval of the
    difference. No discordant example: p = 1 and the interval is [0, 0].
    """
    targets, predictions_a, predictions_b = (np.asarray(array) for array in (targets, predictions_a, predictions_b))
    if not (targets.shape == predictions_a.shape == predictions_b.shape) or targets.ndim != 1:
        raise ValueError(f"McNemar needs three 1-d arrays of one length, got shapes "
                         f"{targets.shape}, {predictions_a.shape}, {predictions_b.shape}")
    right_a, right_b = predictions_a == targets, predictions_b == targets
    only_a, only_b, total = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b)), len(targets)
    discordant = only_a + only_b
    label = f"McNemar exact, 1 seed: {TEST_SET_ONLY}"
    difference = 100 * (only_a - only_b) / total if total else math.nan
    if discordant == 0:
        return McNemar(only_a, only_b, total, 1.0, Interval(difference, 0.0, 0.0, label))
    test = stats.binomtest(only_a, discordant, p=0.5)
    share = test.proportion_ci(confidence_level=confidence, method="exact")
    scale = 100 * discordant / total
    interval = Interval(difference, scale * (2 * share.low - 1), scale * (2 * share.high - 1), label)
    return McNemar(only_a, only_b, total, float(test.pvalue), interval)


def verdict(difference: Interval) -> str:
    """``better`` when the interval of (method - baseline) lies above 0, ``worse`` below, ``tie``
    when it contains 0; ``n/a`` when there is no interval."""
    if not difference.known:
        return NO_VERDICT
    if difference.low > 0:
        return BETTER
    if difference.high < 0:
        return WORSE
    return TIE


def mcnemar_verdict(result: McNemar, alpha: float = ALPHA) -> str:
    """``better`` / ``worse`` (A against B) when McNemar rejects equal accuracy at ``alpha``, else ``tie``."""
    if result.p_value >= alpha or result.only_a == result.only_b:
        return TIE
    return BETTER if result.only_a > result.only_b else WORSE
