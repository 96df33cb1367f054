"""Read run folders and the published reference table into pandas frames.

A run folder is any folder holding ``config.yaml`` or ``result.json``. A
training run writes ``config.yaml`` first, appends one row per finished epoch
to ``metrics.csv`` and writes ``result.json`` atomically, last. So:

- ``finished``: ``result.json`` parses, carries every required key and agrees with
  the folder;
- ``incomplete``: no ``result.json`` yet (still running, interrupted, or
  crashed); ``resumable`` tells whether a ``checkpoint.pt`` is there;
- ``corrupt``: ``result.json`` is unreadable, not an object, misses keys or
  holds the wrong types, or the folder disagrees with it (no ``metrics.csv``, a
  final top-1 above its best epoch's: :func:`acdc_bench.run.folder.finished_problems`);
  ``error`` says why;
- ``failed``: the run trained to its end but missed the sparsity its method promises
  (``failed.txt``, no ``result.json``): never a result; ``error`` holds the message.

:func:`load_runs` lists every run folder, whatever its state, and never raises
on a bad folder.
"""

from __future__ import annotations

import logging
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from acdc_bench.report.protocol import run_protocol
from acdc_bench.core.io import flatten
from acdc_bench.run import folder
from acdc_bench.run.store import RunStore

log = logging.getLogger(__name__)

#: Columns of :func:`load_runs`, in order; flattened extras follow before the status columns.
RUN_COLUMNS = [
    "run_id", "suite", "dataset", "model", "method", "variant", "distribution",
    "target_sparsity", "actual_sparsity", "top1", "top1_best", "best_epoch", "top1_dense", "seed", "epochs",
    "training_flops", "dense_training_flops", "training_flops_multiplier",
    "inference_flops", "dense_inference_flops", "inference_flops_multiplier",
    "budget_mode", "budget_reference_training_flops", "budget_achieved_ratio",
    "wall_time_s", "schema_version", "layer_densities",
]
STATUS_COLUMNS = ["epochs_completed", "resumable", "run_dir", "status", "error"]
#: The numeric columns: the result's number fields (:class:`acdc_bench.run.folder.Result`), the
#: budget's numbers and the epochs a run folder's metrics.csv holds.
NUMERIC_RUN_COLUMNS = [
    *(column for column in RUN_COLUMNS if column in folder.RESULT_NUMBER_KEYS + folder.RESULT_OPTIONAL_NUMBER_KEYS),
    "budget_reference_training_flops", "budget_achieved_ratio", "epochs_completed",
]

METRICS_COLUMNS = folder.METRIC_COLUMNS

REFERENCE_COLUMNS = [
    "source_id", "dataset", "model", "method", "variant", "distribution",
    "target_sparsity", "reported_sparsity", "top1", "top1_std", "train_flops_mult",
    "inference_flops_mult", "epochs", "status", "note", "source",
]
REFERENCE_NUMERIC_COLUMNS = [
    "target_sparsity", "reported_sparsity", "top1", "top1_std", "train_flops_mult",
    "inference_flops_mult", "epochs",
]
#: ``aggregator``: a value from an aggregator site (Papers with Code) tied to no checkpoint or table;
#: listed, never the row a cell is compared with.
REFERENCE_STATUSES = ("verified", "reported", "unverified", "aggregator")
#: How a published number was selected: the ``best`` epoch's checkpoint (on the validation set; for
#: ImageNet that is the test set), the ``final`` epoch's, or ``unknown``. Optional columns, with
#: ``runs`` (how many runs the number summarises; empty: not said).
REFERENCE_SELECTIONS = ("best", "final", "unknown")
#: The protocol of a published number (optional columns; empty: not published, and then no run is
#: compared with the row): ``recipe`` (whose code: acdc, rigl, gale, str, ...), ``denominator``
#: (``all`` prunable weights, or ``pruned layers`` only), ``label_smoothing``, ``length`` (training
#: length over the recipe's own ~100 epochs) and ``batch_size``. See :func:`run_protocol`.
REFERENCE_DENOMINATORS = ("all", "pruned layers", "")
REFERENCE_PROTOCOL_NUMBERS = ("label_smoothing", "length", "batch_size")
#: Where a published number was read (optional columns; the shipped table fills the first three in every
#: row): ``repository`` (GitHub owner/name), ``path`` in it and ``commit`` (full hash); ``config``, the
#: official configuration the number was trained with, where the source ties it to one; ``inferred``, each
#: field of the row that was inferred rather than read, and from what (empty: every field was read).
REFERENCE_PROVENANCE = ("repository", "path", "commit", "config", "inferred")
#: The published numbers ship inside the package (``leaderboards/reference/`` installed as
#: ``acdc_bench.reference``), so they are found after a non-editable install too.
DEFAULT_REFERENCE_PATH = Path(str(resources.files("acdc_bench.reference").joinpath("published.csv")))

# Config keys copied into the row of a run that has no usable result.json.
_CONFIG_FIELDS = {
    "run_id": "run_id", "suite": "suite", "dataset": "dataset", "model": "model",
    "method": "method", "variant": "variant", "distribution": "distribution",
    "sparsity": "target_sparsity", "seed": "seed", "epochs": "epochs",
}


def find_run_dirs(root: str | os.PathLike) -> list[Path]:
    """The run folders at any depth below ``root`` (:meth:`RunStore.find`); a root that is not a
    folder is skipped with a warning."""
    if not Path(root).is_dir():
        log.warning("results root %s is not a folder; skipped", root)
        return []
    return RunStore.find(root)


def _flatten(mapping: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts as ``parent_child`` keys, ``layer_densities`` kept whole."""
    return flatten(mapping, "_", keep=("layer_densities",))


def _read_config(store: RunStore, run_id: str) -> tuple[dict[str, Any], str | None]:
    """Return the run's config fields usable as row values, and a read error if any."""
    try:
        config = store.config(run_id)
    except folder.UnreadableConfig as error:
        return {}, str(error)
    if config is None:
        return {}, None
    fields: dict[str, Any] = {f"protocol_{key}": value for key, value in run_protocol(config).items()}
    for config_key, column in _CONFIG_FIELDS.items():
        value = config.get(config_key)
        if isinstance(value, dict):  # e.g. ``method: {name: acdc, ...}``
            value = value.get("name")
        if value is not None and not isinstance(value, (list, dict)):
            fields[column] = value
    return fields, None


def _epochs_completed(store: RunStore, run_id: str) -> float:
    """Number of epochs with a row in metrics.csv (NaN when there is none or it is unreadable)."""
    try:
        metrics = load_metrics(store.folder(run_id))
    except (OSError, ValueError, pd.errors.ParserError):
        return math.nan
    return float(len(metrics)) if len(metrics) else math.nan


def _read_run(run_dir: Path) -> dict[str, Any]:
    """Return one row of :func:`load_runs` for ``run_dir``; never raises on bad content."""
    store, run_id = RunStore.locate(run_dir)
    row: dict[str, Any] = {}
    resumable = store.checkpoint_path(run_id) is not None
    config_fields, config_error = _read_config(store, run_id)
    written = store.result_as_written(run_id)
    if written is not None:
        result, problems = written
        if isinstance(result, dict):  # a corrupt result keeps what it has, never counts as finished
            row.update(_flatten(result))
        if config_error and not problems:  # its protocol unknown, it is compared with nothing
            problems, config_error = [f"{config_error} (the run's protocol cannot be read)"], None
        if not problems:
            row.update({key: value for key, value in config_fields.items() if key.startswith("protocol_")})
            if "top1_best" not in result:  # written before runs recorded it: read it from metrics.csv
                check = result.get("sparsity_check") or {}
                metrics = load_metrics(run_dir)
                row["top1_best"], row["best_epoch"] = folder.best_epoch(
                    metrics.to_dict("records"), float(check.get("reached", result["actual_sparsity"])),
                    float(check.get("tolerance", 1e-3)))
            row.update(run_dir=str(run_dir), resumable=resumable, status="finished", error="",
                       epochs_completed=float(result["epochs"]))
            return row
        status, reasons = "corrupt", problems
    elif (failure := store.failure(run_id)) is not None:
        status, reasons = "failed", [failure]
    else:
        status, reasons = "incomplete", ["no result.json"]
        if store.being_trained(run_id):
            reasons.append("being trained now (run folder locked)")
        reasons.append("checkpoint.pt present (resumable)" if resumable else "no checkpoint.pt")
        if not store.metrics_path(run_id).exists():
            reasons.append("no metrics.csv")
    if config_error:
        reasons.append(config_error)
    for column, value in config_fields.items():
        row.setdefault(column, value)
    row.setdefault("run_id", run_id)
    row.update(run_dir=str(run_dir), resumable=resumable, status=status, error="; ".join(reasons),
               epochs_completed=_epochs_completed(store, run_id))
    return row


def load_runs(*roots: str | os.PathLike) -> pd.DataFrame:
    """Walk ``roots`` (default ``runs``) into one row per run folder.

    Columns: :data:`RUN_COLUMNS` (result.json flattened: ``budget.mode`` becomes
    ``budget_mode``, ``versions.torch`` becomes ``versions_torch``;
    ``layer_densities`` stays a dict), any further flattened keys, then
    ``epochs_completed``, ``resumable``, ``run_dir``, ``status`` (``finished``,
    ``incomplete``, ``corrupt``) and ``error`` (why a run is not finished, empty
    otherwise). Unfinished and corrupt runs keep the fields their config.yaml
    gives (``sparsity`` as ``target_sparsity``). A folder reached from two
    roots is listed once.
    """
    roots = roots or ("runs",)
    seen: set[Path] = set()
    rows = []
    for root in roots:
        for run_dir in find_run_dirs(root):
            resolved = run_dir.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            try:
                rows.append(_read_run(run_dir))
            except Exception as error:  # a bad folder must never hide the others
                log.exception("could not read run folder %s", run_dir)
                rows.append({"run_dir": str(run_dir), "run_id": run_dir.name,
                             "status": "corrupt", "error": f"unreadable run folder: {error!r}"})
    extra_columns = sorted({key for row in rows for key in row} - set(RUN_COLUMNS) - set(STATUS_COLUMNS))
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS + extra_columns + STATUS_COLUMNS)
    for column in NUMERIC_RUN_COLUMNS:
        runs[column] = pd.to_numeric(runs[column], errors="coerce").astype("float64")
    for column in ("variant", "distribution", "error"):
        runs[column] = runs[column].astype(object).fillna("").astype(str)
    runs["resumable"] = runs["resumable"].fillna(False).astype(bool)
    counts = runs["status"].value_counts().to_dict()
    log.info("loaded %d run folders from %s: %s", len(runs), ", ".join(map(str, roots)), counts)
    return runs


#: One table cell and seed: two finished runs with the same key are one measurement taken twice.
SEED_KEY = ["suite", "method", "variant", "target_sparsity", "cell", "seed"]


def select_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``runs`` with each seed of each cell once, and a notice per run left out.

    A cell (``cell``: what the run was asked to compute, seeds aside; see
    :func:`acdc_bench.config.cell_id`) counts each seed once: of two finished runs of one cell and
    seed (a run re-made under another id, say), the one finished last supersedes the other, and the
    notice names both folders. A calibration chain's earlier runs are not duplicates: they stay (the
    tables use the chain's last run, :func:`drop_superseded`)."""
    if runs.empty or "status" not in runs:
        return runs, []
    ends = drop_superseded(runs[runs["status"] == "finished"])
    if ends.empty:
        return runs, []
    keys = pd.DataFrame({column: (ends[column] if column in ends else pd.Series(math.nan, index=ends.index))
                         for column in SEED_KEY})
    keys["target_sparsity"] = pd.to_numeric(keys["target_sparsity"], errors="coerce").round(6)
    keys = keys.astype(str)
    dropped, notices = [], []
    for _, group in ends.groupby([keys[column] for column in SEED_KEY], sort=True):
        if len(group) < 2:
            continue
        order = sorted(group.index, key=lambda index: _finished_at(group.loc[index]))
        kept = order[-1]
        for index in order[:-1]:
            dropped.append(index)
            notices.append(f"seed {group.at[index, 'seed']:g} of {group.at[index, 'method']} "
                           f"{group.at[index, 'target_sparsity']:g} ({group.at[index, 'cell']}) was run twice: "
                           f"{group.at[kept, 'run_dir']} (finished last) supersedes {group.at[index, 'run_dir']}")
    return runs.drop(index=dropped), notices


def drop_superseded(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` without the budget-calibration runs a later run of the same chain replaced.

    A matched STR cell is a chain of runs (``budget_calibration_iteration`` 0, 1, ...;
    see :mod:`acdc_bench.budget.calibrate`); the tables and plots use its last finished run:
    a finished run that another finished run names as its ``previous_run`` is superseded.
    A folder may hold two chains of one cell and seed when the suite's shipped calibration
    start changed after the first was run; then the most recently finished chain end is kept
    (``result.json``'s time; the higher iteration where that is unknown), with a warning.
    Runs outside a chain, and unfinished runs, are kept.
    """
    column = "budget_calibration_iteration"
    if column not in runs or runs.empty:
        return runs
    iteration = pd.to_numeric(runs[column], errors="coerce")
    chained = iteration.notna() & (runs["status"] == "finished")
    if not chained.any():
        return runs
    superseded = pd.Series(False, index=runs.index)
    if "budget_calibration_previous_run" in runs:
        named = set(runs.loc[chained, "budget_calibration_previous_run"].dropna())
        superseded = chained & runs["run_id"].isin(named)
    ends = runs[chained & ~superseded]
    keys = [ends[key].round(6) if key == "target_sparsity" else ends[key]
            for key in ("suite", "cell", "method", "target_sparsity", "seed", "budget_mode") if key in ends]
    for _, group in ends.groupby(keys, dropna=False):
        if len(group) < 2:
            continue
        order = sorted(group.index, key=lambda i: (_finished_at(group.loc[i]), iteration[i]))
        superseded.loc[order[:-1]] = True
        log.warning("%d calibration chains of %s %g seed %s in one folder: using %s, the last to finish; "
                    "delete the others' folders (%s) if the suite's calibration start changed since they ran",
                    len(group), group.loc[order[-1], "method"], group.loc[order[-1], "target_sparsity"],
                    group.loc[order[-1], "seed"], group.loc[order[-1], "run_id"],
                    ", ".join(str(group.loc[i, "run_id"]) for i in order[:-1]))
    return runs[~superseded]


def _finished_at(row) -> float:
    """When a run wrote its ``result.json`` (0 when unknown)."""
    try:
        store, run_id = RunStore.locate(row["run_dir"])
    except (KeyError, TypeError):
        return 0.0
    return store.result_written_at(run_id) or 0.0


def load_metrics(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Read ``<run_dir>/metrics.csv`` (one row per finished epoch).

    Returns an empty frame with :data:`METRICS_COLUMNS` when the file is
    missing or empty. Numeric columns are float (``mask_overlap`` is NaN where
    empty); a truncated last line (run killed mid-write) is dropped. Raises
    ``pandas.errors.ParserError`` for a file that is not CSV.
    """
    store, run_id = RunStore.locate(run_dir)
    path = store.metrics_path(run_id)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame({column: pd.Series(dtype="float64") for column in METRICS_COLUMNS})
    metrics = pd.read_csv(path, on_bad_lines="skip")
    for column in METRICS_COLUMNS:
        if column not in metrics.columns:
            metrics[column] = math.nan
    for column in metrics.columns:
        if column != "phase":
            metrics[column] = pd.to_numeric(metrics[column], errors="coerce").astype("float64")
    metrics["phase"] = metrics["phase"].fillna("").astype(str)
    metrics = metrics.dropna(subset=["epoch"]).reset_index(drop=True)
    return metrics


def _numbers(values: pd.Series, column: str, path) -> pd.Series:
    """A text column as float ('' -> NaN); a value that is not a number is an error naming its line."""
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = numbers.isna() & values.notna() & (values != "")
    if bad.any():
        line = int(bad.to_numpy().nonzero()[0][0]) + 2
        raise ValueError(f"{path}:{line}: {column} {values[bad].iloc[0]!r} is not a number")
    return numbers


def read_text_csv(path: Path, what: str) -> pd.DataFrame:
    """A CSV file with every value as text; a file that is empty, not text or not CSV is a ValueError
    naming it and ``what`` it should be."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a CSV {what} ({str(error).splitlines()[0]})") from None


def load_reference(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read the published reference table (default: ``leaderboards/reference/published.csv``).

    Text columns come back as strings ('' where empty), numeric ones as float
    (NaN where not published). Raises ``ValueError`` when a column is missing
    or a status is not one of :data:`REFERENCE_STATUSES`.
    """
    path = Path(path) if path is not None else DEFAULT_REFERENCE_PATH
    reference = read_text_csv(path, "reference table")
    missing = [column for column in REFERENCE_COLUMNS if column not in reference.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    for column in reference.columns:
        reference[column] = reference[column].astype(str).str.strip()
    for column in ("selection", "runs", "recipe", "denominator", *REFERENCE_PROTOCOL_NUMBERS,
                   *REFERENCE_PROVENANCE):  # optional columns
        if column not in reference:
            reference[column] = ""
    reference["selection"] = reference["selection"].replace("", "unknown")
    for column in (*REFERENCE_NUMERIC_COLUMNS, "runs", *REFERENCE_PROTOCOL_NUMBERS):
        reference[column] = _numbers(reference[column], column, path)
    for column, allowed in (("selection", REFERENCE_SELECTIONS), ("denominator", REFERENCE_DENOMINATORS),
                            ("status", REFERENCE_STATUSES)):
        bad = ~reference[column].isin(allowed)
        if bad.any():
            line = int(bad.to_numpy().nonzero()[0][0]) + 2
            raise ValueError(f"{path}:{line}: {column} {reference[column][bad].iloc[0]!r} not in "
                             f"{tuple(value for value in allowed if value)}")
    return reference
