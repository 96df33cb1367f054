"""The per-run record shipped beside a leaderboard, and its check on another machine.

``leaderboards/<suite>.runs.csv`` holds one row per finished run of the leaderboard's folder:
its id, method, target, seed, final top-1, sparsity, training FLOPs, steps, the SHA-256 of its
``metrics.csv`` (every column but the wall time) and the numerics and CPU it ran under.
``acdc-bench verify`` re-runs seed 0 of every cell (``--all``: every run) in a temporary folder
and compares, run by run: ``identical`` when every recorded value is equal, else ``different``
with what differs. Under portable numerics (:mod:`acdc_bench.numerics`) every run is meant to be
identical on Intel and AMD x86-64 CPUs with AVX2; a ``different`` says where that fails.

The record it holds the runs to is the shipped one: ``acdc_bench/records/<suite>.runs.csv``,
installed with the package, a copy of ``leaderboards/<suite>.runs.csv`` as committed (the tests
hold the two equal). ``reproduce`` and ``leaderboard`` rewrite the latter with a user's own runs;
the packaged copy stays what the project measured. The record keeps no ``--set`` overrides: the
runs to re-make are planned from the suite and the command's options, and a recorded run they
do not plan is refused before anything trains (:func:`plan_against_record`).
"""

from __future__ import annotations

import csv
import hashlib
import os
from importlib import resources
from pathlib import Path

import pandas as pd

from acdc_bench.config import Suite
from acdc_bench.core.io import atomic_write_text
from acdc_bench.run.store import RunStore

#: The record's columns; the ones compared, and how (``exact``: as text, the floats' full repr).
RECORD_COLUMNS = ["run_id", "method", "target_sparsity", "seed", "top1", "actual_sparsity", "training_flops",
                  "steps", "metrics_sha256", "numerics", "cpu"]
COMPARED = ["top1", "actual_sparsity", "training_flops", "steps", "metrics_sha256"]


def metrics_digest(run_dir: str | os.PathLike) -> str:
    """SHA-256 of ``metrics.csv`` without its ``wall_time_s`` column (what the run computed)."""
    store, run_id = RunStore.locate(run_dir)
    with open(store.metrics_path(run_id), newline="") as handle:
        rows = [[key + "=" + value for key, value in row.items() if key != "wall_time_s"]
                for row in csv.DictReader(handle)]
    return hashlib.sha256("\n".join(",".join(row) for row in rows).encode()).hexdigest()


def run_record(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run of ``runs`` (:func:`acdc_bench.report.results.load_runs`), sorted by id."""
    finished = runs[runs["status"] == "finished"] if not runs.empty else runs
    rows = []
    for _, run in finished.iterrows():
        rows.append({
            "run_id": run["run_id"], "method": run["method"], "target_sparsity": run["target_sparsity"],
            "seed": int(run["seed"]), "top1": repr(float(run["top1"])),
            "actual_sparsity": repr(float(run["actual_sparsity"])),
            "training_flops": repr(float(run["training_flops"])), "steps": int(run["steps"]),
            "metrics_sha256": metrics_digest(run["run_dir"]),
            "numerics": run.get("numerics_mode") if isinstance(run.get("numerics_mode"), str) else "native",
            "cpu": run.get("numerics_cpu") if isinstance(run.get("numerics_cpu"), str) else "",
        })
    return pd.DataFrame(rows, columns=RECORD_COLUMNS).sort_values("run_id", ignore_index=True)


def record_path(leaderboard_csv: str | os.PathLike) -> Path:
    path = Path(leaderboard_csv)
    return path.with_name(f"{path.stem}.runs.csv")


def export_run_record(runs: pd.DataFrame, leaderboard_csv: str | os.PathLike) -> list[Path]:
    """Write the record beside the leaderboard CSV (``<stem>.runs.csv``), atomically."""
    path = record_path(leaderboard_csv)
    return [atomic_write_text(path, run_record(runs).to_csv(index=False))]


def read_record(path: str | os.PathLike) -> pd.DataFrame:
    """The shipped record; every value as text (so that floats compare as written)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no run record to verify against (the leaderboard export writes it: "
                                f"`acdc-bench leaderboard` or `nox -s reproduce`)")
    from acdc_bench.report.results import read_text_csv

    record = read_text_csv(path, "run record")
    missing = [column for column in RECORD_COLUMNS if column not in record]
    if missing:
        raise ValueError(f"{path}: not a run record, missing column(s) {', '.join(missing)}")
    for column, kind, check in (("seed", "a whole number", int), *((column, "a number", float) for column in
                                ("target_sparsity", "top1", "actual_sparsity", "training_flops", "steps"))):
        for line, value in enumerate(record[column], start=2):
            try:
                check(value)
            except ValueError:
                raise ValueError(f"{path}:{line}: {column} {value!r} is not {kind}") from None
    return record


def shipped_records() -> dict[str, Path]:
    """The run records shipped with the package (``acdc_bench/records``), by suite name."""
    records = Path(str(resources.files("acdc_bench").joinpath("records")))
    return {path.name[:-len(".runs.csv")]: path for path in sorted(records.glob("*.runs.csv"))}


def shipped_record(suite_name: str) -> Path:
    """The shipped record of a suite; FileNotFoundError naming the shipped ones and ``--record``."""
    records = shipped_records()
    if suite_name not in records:
        raise FileNotFoundError(f"suite {suite_name} ships no run record to verify against (shipped: "
                                f"{', '.join(records) or 'none'}); give a record of your own with --record PATH "
                                f"(the leaderboard export writes <suite>.runs.csv beside <suite>.csv)")
    return records[suite_name]


class RecordStore:
    """A record's runs as a read-only run store (:class:`acdc_bench.run.store.RunStore`'s reading
    side): a recorded run is finished with its recorded training FLOPs and sparsity, which is all
    a matched budget reads of the runs it depends on (the reference's FLOPs, a calibration run's
    outcome). ``read``: the recorded run ids read so far."""

    def __init__(self, record: pd.DataFrame):
        self.rows = {row["run_id"]: row for _, row in record.iterrows()}
        self.read: set[str] = set()

    def result(self, run_id: str) -> dict | None:
        row = self.rows.get(run_id)
        if row is None:
            return None
        self.read.add(run_id)
        return {"run_id": run_id, "training_flops": float(row["training_flops"]),
                "actual_sparsity": float(row["actual_sparsity"])}

    def finished(self, run_id: str) -> bool:
        return run_id in self.rows

    exists = finished

    def run_ids(self) -> list[str]:
        return sorted(self.rows)


def plan_against_record(suite: Suite, waves: list, record: pd.DataFrame) -> tuple[list, list[str], list[str]]:
    """The planned runs (``waves`` of :class:`acdc_bench.config.cells.RunSpec`) that re-make recorded
    runs, and what does not match: ``(kept waves, recorded run ids no planned run re-makes, planned
    run ids the record lacks)``.

    Each run is resolved as it will be once the runs before it finished as recorded (a matched run
    against the recorded reference FLOPs, a calibration chain through its recorded runs, whose ids
    all count as planned). A planned run whose id the record lacks is left out (a seed or cell the
    record does not hold); a recorded run that no planned run re-makes means that the options (a
    ``--set``, say) give runs of other ids than the record's.
    """
    from acdc_bench.budget.matching import spec_config

    store = RecordStore(record)
    kept, planned, unrecorded = [], set(), []
    for wave in waves:
        here = []
        for spec in wave:
            store.read.clear()
            run_id = spec_config(suite, spec, store).run_id
            planned |= store.read | {run_id}
            if run_id in store.rows:
                here.append(spec)
            else:
                unrecorded.append(run_id)
        if here:
            kept.append(here)
    return kept, sorted(set(store.rows) - planned), unrecorded


def compare_with_record(record: pd.DataFrame, runs: pd.DataFrame) -> list[dict]:
    """Each recorded run against the run of the same id in ``runs``: one dict per run id of either,
    with ``verdict`` identical, different (``differences`` lists field, recorded, now), missing (in the
    record, not re-run) or extra (re-run, not in the record)."""
    now = run_record(runs).astype(str).set_index("run_id")
    recorded = record.set_index("run_id")
    outcomes = []
    for run_id in sorted(set(recorded.index) | set(now.index)):
        if run_id not in now.index:
            outcomes.append({"run_id": run_id, "verdict": "missing", "differences": []})
            continue
        if run_id not in recorded.index:
            outcomes.append({"run_id": run_id, "verdict": "extra", "differences": []})
            continue
        differences = [(field, recorded.at[run_id, field], now.at[run_id, field]) for field in COMPARED
                       if str(recorded.at[run_id, field]) != str(now.at[run_id, field])]
        outcomes.append({"run_id": run_id, "verdict": "different" if differences else "identical",
                         "differences": differences, "recorded_cpu": recorded.at[run_id, "cpu"],
                         "recorded_numerics": recorded.at[run_id, "numerics"]})
    return outcomes


def format_outcomes(outcomes: list[dict], cpu: str, numerics: str) -> str:
    lines = [f"verify on {cpu}, {numerics} numerics:"]
    for outcome in outcomes:
        line = f"  {outcome['verdict']:<9} {outcome['run_id']}"
        if outcome["verdict"] in ("identical", "different"):
            line += f" (recorded on {outcome['recorded_cpu'] or 'an unrecorded CPU'}, {outcome['recorded_numerics']})"
        if outcome["differences"]:
            line += ": " + "; ".join(f"{field} {old} -> {new}" for field, old, new in outcome["differences"])
        lines.append(line)
    counts = pd.Series([o["verdict"] for o in outcomes]).value_counts().to_dict() if outcomes else {}
    lines.append("  " + ", ".join(f"{counts[v]} {v}" for v in ("identical", "different", "missing", "extra")
                                  if counts.get(v)) if counts else "  nothing to compare")
    return "\n".join(lines)
