"""Where a reproduction's time went: wall time against the FLOP-ideal time, and STR's chains.

The FLOP-ideal time of a run is its metered training FLOPs divided by the machine's dense FLOP
rate: that of the suite's dense training step timed before the runs start
(:func:`acdc_bench.run.steptime.dense_step`), or, without one, the rate the dense runs of the same
folder reached (their training FLOPs over their wall time, which moves with whatever shared the
cores). A method whose ratio wall / ideal is far above 1 spends its time on something other than
the FLOPs it is charged for (a sparse product runs at a lower FLOP rate than a dense one; STR
recomputes its effective weights every step; every run evaluates each epoch).
"""

from __future__ import annotations

import math

import pandas as pd


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def flop_ideal_table(runs: pd.DataFrame, rate: float | None = None) -> pd.DataFrame:
    """Per method and in total: runs, wall time, FLOP-ideal time and their ratio (finished runs);
    ``rate``: the dense FLOP rate (FLOPs/s; default: the dense runs' own)."""
    finished = runs[runs["status"] == "finished"] if not runs.empty else runs
    dense = finished[finished["method"] == "dense"] if not finished.empty else finished
    if rate is None:
        rate = dense["training_flops"].sum() / dense["wall_time_s"].sum() if len(dense) else math.nan
    rows = []
    for method, group in list(finished.groupby("method", sort=False)) + [("total", finished)]:
        wall = float(group["wall_time_s"].sum())
        ideal = float(group["training_flops"].sum()) / rate if rate == rate else math.nan
        rows.append({"method": method, "runs": len(group), "wall_time_s": wall, "flop_ideal_s": ideal,
                     "ratio": wall / ideal if ideal else math.nan})
    return pd.DataFrame(rows)


def format_flop_ideal(table: pd.DataFrame, step: dict | None = None) -> str:
    """The table as text; ``step``: the timed dense step behind its rate (else the dense runs')."""
    if step is None:
        lines = ["time per method: wall time vs the FLOP-ideal time (metered training FLOPs at the dense "
                 "runs' FLOP rate on this machine)"]
    else:
        lines = [f"time per method: wall time vs the FLOP-ideal time (metered training FLOPs at the rate of the "
                 f"dense training step timed before the runs: {step['seconds'] * 1e3:.2f} ms, the fastest block "
                 f"among {step['steps']} timed steps, {step['rate'] / 1e9:.1f} GFLOP/s, {step['threads']} thread(s); "
                 f"evaluation is outside it)"]
    for row in table.itertuples():
        ideal = "-" if row.flop_ideal_s != row.flop_ideal_s else _duration(row.flop_ideal_s)
        ratio = "-" if row.ratio != row.ratio else f"{row.ratio:.2f}x"
        lines.append(f"  {row.method:<8} {row.runs:>3} runs  wall {_duration(row.wall_time_s):>7}  "
                     f"FLOP-ideal {ideal:>7}  ratio {ratio}")
    return "\n".join(lines)


def calibration_summary(runs: pd.DataFrame) -> list[str]:
    """One line per calibration chain (STR under a matched budget): how many runs and why."""
    column = "budget_calibration_iteration"
    if runs.empty or column not in runs:
        return []
    chained = runs[pd.to_numeric(runs[column], errors="coerce").notna() & (runs["status"] == "finished")]
    lines = []
    for (method, sparsity, seed), chain in chained.groupby(["method", "target_sparsity", "seed"]):
        chain = chain.sort_values(column)
        reasons = []
        for row in chain.itertuples():
            ratio, actual = row.budget_achieved_ratio, row.actual_sparsity
            accepted = bool(getattr(row, "budget_calibration_within_tolerance", False))
            reasons.append(f"run {int(getattr(row, column)) + 1}: FLOPs {ratio:.3f}x budget, sparsity {actual:.4f}"
                           + (" (accepted)" if accepted else ""))
        start = chain.iloc[0].get("budget_calibration_started_from")
        start = start if isinstance(start, str) and start else "the suite's recipe"
        lines.append(f"{method} {sparsity:g} seed {int(seed)}: {len(chain)} run(s) from {start}; " + "; ".join(reasons))
    return lines
