"""Export results as leaderboard rows with a stable, validated schema.

The schema follows Papers with Code result rows: one row is one
(task, dataset, model, method, variant, sparsity) result with one metric
value and where it comes from. Our own runs (aggregated over seeds, source
``acdc_bench``) and the published reference rows for the same dataset and
model sit in the same table, so one file shows both.

Columns, in this order (:data:`LEADERBOARD_COLUMNS`):

========================== ======== ==========================================================
column                     dtype    meaning
========================== ======== ==========================================================
task                       str      always ``Sparse training / Image classification``
dataset                    str      published dataset name (``ImageNet``, ``CIFAR-100``, ...)
model                      str      published model name (``ResNet50``, ...)
method                     str      ``AC/DC``, ``GMP``, ``RigL``, ``STR``, ``Dense``, ...
variant                    str      training-length variant (``2x``, ``5x``); '' = standard
distribution               str      layer sparsity distribution ('' for dense)
metric                     str      always ``Top-1 accuracy (%)``
value                      float    the metric, in [0, 100]; for our rows the mean over seeds
value_std                  float    sample std of the metric over seeds, >= 0 (ours: NaN for
                                    one seed; published: the published std, NaN if none)
value_ci_low               float    lower end of the 95% interval of ``value`` (ours only, NaN
                                    if none): t over seeds, or with one seed the test-set
                                    binomial (Wilson) interval from ``predictions.npz``
value_ci_high              float    upper end of that interval; both ends are given or neither,
                                    and ``value_ci_low <= value <= value_ci_high``
value_best                 float    ours: the mean best-epoch top-1 (each run's best epoch at its final
                                    sparsity); NaN for published rows, whose ``selection`` says
                                    which epoch ``value`` is
selection                  str      which epoch ``value`` is: ``final`` (ours), or the published
                                    row's ``best``, ``final`` or ``unknown``
sparsity                   float    achieved sparsity (fraction of zero prunable weights), in
                                    [0, 1): our mean actual sparsity; the published reported
                                    sparsity, else its target
training_flops_multiplier  float    training FLOPs / dense training FLOPs; NaN if unknown
inference_flops_multiplier float    inference FLOPs / dense inference FLOPs; NaN if unknown
epochs                     Int64    training epochs; <NA> if unknown
seeds                      Int64    runs averaged (ours); <NA> if not published
source                     str      ``acdc_bench`` for our runs, else the citation with the file it was read from (repository, path, commit); non-empty
source_status              str      ``measured`` (ours) or the reference status: ``verified``,
                                    ``reported``, ``unverified``, ``aggregator``
run_ids                    str      our run ids joined by ';' ('' for published rows)
train_subset               Int64    training examples our runs used (<NA>: the whole training set)
overrides                  str      the ``--set`` overrides our runs were trained with ('' for none)
protocol                   str      the recipe family, sparsity denominator, label smoothing, length
                                    and batch size of the row ('' where not recorded)
note                       str      what sets a row apart from another of the same method and
                                    target (``differs: key=value``), or a budget its runs missed
========================== ======== ==========================================================

Rows are sorted by dataset, model, sparsity (to 3 decimals), then value (best first).
:func:`validate_leaderboard` enforces the schema; :func:`export_leaderboard`
validates before writing CSV and Markdown. The Markdown shows ``value`` as
mean ± half-width of its 95% interval where there is one. :func:`read_leaderboard`
reads a CSV written before ``value_std``/``value_ci_low``/``value_ci_high`` existed
with those columns empty (NaN).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pandas as pd

from acdc_bench.report.protocol import PROTOCOL_FIELDS
from acdc_bench.report.compare import citation, compare_table, display_name, name_key, protocol_summary, run_protocol_of
from acdc_bench.core.io import atomic_write_text

log = logging.getLogger(__name__)

TASK = "Sparse training / Image classification"
METRIC = "Top-1 accuracy (%)"
OUR_SOURCE = "acdc_bench"
OUR_SOURCE_STATUS = "measured"
SOURCE_STATUSES = (OUR_SOURCE_STATUS, "verified", "reported", "unverified", "aggregator")

#: Every column, in order, with its dtype: declared once (the module docstring's table describes each,
#: and a test holds the two equal).
LEADERBOARD_SCHEMA = {
    "task": "str", "dataset": "str", "model": "str", "method": "str", "variant": "str", "distribution": "str",
    "metric": "str", "value": "float", "value_std": "float", "value_ci_low": "float", "value_ci_high": "float",
    "value_best": "float", "selection": "str", "sparsity": "float", "training_flops_multiplier": "float",
    "inference_flops_multiplier": "float", "epochs": "Int64", "seeds": "Int64", "source": "str",
    "source_status": "str", "run_ids": "str", "train_subset": "Int64", "overrides": "str", "protocol": "str",
    "note": "str",
}
LEADERBOARD_COLUMNS = list(LEADERBOARD_SCHEMA)
STRING_COLUMNS = [column for column, dtype in LEADERBOARD_SCHEMA.items() if dtype == "str"]
INTERVAL_COLUMNS = ["value_std", "value_ci_low", "value_ci_high"]
FLOAT_COLUMNS = [column for column, dtype in LEADERBOARD_SCHEMA.items() if dtype == "float"]
INTEGER_COLUMNS = [column for column, dtype in LEADERBOARD_SCHEMA.items() if dtype == "Int64"]
NON_EMPTY_COLUMNS = ["task", "dataset", "model", "method", "metric", "source", "source_status"]


def _empty_leaderboard() -> pd.DataFrame:
    return _with_dtypes(pd.DataFrame({column: [] for column in LEADERBOARD_COLUMNS}))


def _with_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Cast a frame with the leaderboard columns to the schema's dtypes."""
    frame = frame[LEADERBOARD_COLUMNS].copy()
    for column in STRING_COLUMNS:
        frame[column] = frame[column].fillna("").astype(str)
    for column in FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in INTEGER_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").round().astype("Int64")
    return frame


def build_leaderboard(runs: pd.DataFrame, reference: pd.DataFrame | None, suite: str) -> pd.DataFrame:
    """Leaderboard of ``suite``: our finished runs per method/sparsity plus matching published rows.

    Published rows are those of the datasets and models the suite's runs use
    (any run status); a published row without any sparsity is left out, with a
    logged note, as it cannot be placed.
    """
    ours = compare_table(runs, reference, suite=suite)
    rows = [{
        "task": TASK, "dataset": display_name("dataset", row.dataset), "model": display_name("model", row.model),
        "method": display_name("method", row.method), "variant": row.variant, "distribution": row.distribution,
        "metric": METRIC, "value": row.top1_mean, "value_std": row.top1_std,
        "value_ci_low": row.top1_ci_low, "value_ci_high": row.top1_ci_high,
        "value_best": row.top1_best_mean, "selection": "final",
        "sparsity": row.actual_sparsity if not math.isnan(row.actual_sparsity) else row.target_sparsity,
        "training_flops_multiplier": row.training_flops_multiplier,
        "inference_flops_multiplier": row.inference_flops_multiplier,
        "epochs": row.epochs, "seeds": row.seeds, "source": OUR_SOURCE,
        "source_status": OUR_SOURCE_STATUS, "run_ids": row.run_ids,
        "train_subset": row.train_subset, "overrides": row.overrides,
        "protocol": protocol_summary(run_protocol_of(row._asdict())),
        "note": "; ".join(text for text in (f"differs: {row.differs}" if row.differs else "", row.budget_flag) if text),
    } for row in ours.itertuples()]

    suite_runs = runs[runs["suite"] == suite] if "suite" in runs else runs.iloc[0:0]
    pairs = {(name_key(display_name("dataset", dataset)), name_key(display_name("model", model)))
             for dataset, model in suite_runs[["dataset", "model"]].dropna().itertuples(index=False)}
    if reference is not None and not reference.empty:
        for row in reference.itertuples():
            if (name_key(row.dataset), name_key(row.model)) not in pairs:
                continue
            sparsity = row.reported_sparsity if not math.isnan(row.reported_sparsity) else row.target_sparsity
            if math.isnan(sparsity):
                log.info("published %s %s %s top-1 %s (%s) has no sparsity; left off the leaderboard",
                         row.dataset, row.model, row.method, row.top1, row.source_id)
                continue
            rows.append({
                "task": TASK, "dataset": row.dataset, "model": row.model, "method": row.method,
                "variant": row.variant, "distribution": row.distribution, "metric": METRIC,
                "value": row.top1, "value_std": row.top1_std, "value_ci_low": math.nan,
                "value_ci_high": math.nan, "value_best": math.nan, "selection": row.selection, "sparsity": sparsity, "training_flops_multiplier": row.train_flops_mult,
                "inference_flops_multiplier": row.inference_flops_mult, "epochs": row.epochs, "seeds": math.nan,
                "source": citation(row._asdict()), "source_status": row.status, "run_ids": "",
                "protocol": protocol_summary({field: getattr(row, field, "") for field in PROTOCOL_FIELDS}),
            })
    if not rows:
        log.info("suite %s: nothing for the leaderboard", suite)
        return _empty_leaderboard()
    board = _with_dtypes(pd.DataFrame(rows))
    board["sparsity_rounded"] = board["sparsity"].round(3)  # 0.7999 measured sits with published 0.80
    board = board.sort_values(["dataset", "model", "sparsity_rounded", "value"], ascending=[True, True, True, False],
                              kind="stable")
    return board[LEADERBOARD_COLUMNS].reset_index(drop=True)


def _shown(value) -> str:
    """repr of a cell without numpy's wrapper (``150.0``, not ``np.float64(150.0)``)."""
    return repr(value.item() if hasattr(value, "item") else value)


def _row_label(frame: pd.DataFrame, index) -> str:
    row = frame.loc[index]
    return f"row {index} (method {_shown(row.get('method', '?'))}, sparsity {_shown(row.get('sparsity', '?'))})"


def validate_leaderboard(df: pd.DataFrame) -> None:
    """Raise ``ValueError`` naming each column or row that breaks the schema (see the module docstring)."""
    columns = list(df.columns)
    if columns != LEADERBOARD_COLUMNS:
        missing = [column for column in LEADERBOARD_COLUMNS if column not in columns]
        extra = [column for column in columns if column not in LEADERBOARD_COLUMNS]
        if missing or extra:
            raise ValueError(f"leaderboard columns: missing {missing}, unexpected {extra}")
        raise ValueError(f"leaderboard columns out of order: {columns}, expected {LEADERBOARD_COLUMNS}")

    problems: list[str] = []
    for column in STRING_COLUMNS:
        not_text = df.index[~df[column].map(lambda value: isinstance(value, str))]
        problems += [f"{_row_label(df, index)}: column {column!r} is {_shown(df.at[index, column])}, not text"
                     for index in not_text]
    for column in NON_EMPTY_COLUMNS:
        empty = df.index[df[column].map(lambda value: not isinstance(value, str) or not value.strip())]
        problems += [f"{_row_label(df, index)}: column {column!r} is empty" for index in empty]
    for column in FLOAT_COLUMNS + INTEGER_COLUMNS:
        dtype = df[column].dtype
        if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            problems.append(f"column {column!r} has dtype {dtype}, expected a number")
    if problems:  # dtype problems make the range checks meaningless
        raise ValueError("leaderboard breaks the schema:\n" + "\n".join(problems))

    def check(column: str, valid: pd.Series, expectation: str, *, required: bool) -> None:
        values = df[column]
        bad = ~valid.fillna(False).astype(bool) & (values.notna() | required)
        problems.extend(f"{_row_label(df, index)}: column {column!r} is {_shown(values[index])}, {expectation}"
                        for index in df.index[bad])

    check("value", df["value"].between(0, 100), "outside [0, 100]", required=True)
    check("value_std", df["value_std"] >= 0, "negative", required=False)
    low, high = df["value_ci_low"], df["value_ci_high"]
    for column, other in (("value_ci_low", high), ("value_ci_high", low)):
        check(column, df[column].notna() | other.isna(), "empty while the other end is given", required=True)
    check("value_ci_low", low <= df["value"], "above value", required=False)
    check("value_ci_high", high >= df["value"], "below value", required=False)
    check("sparsity", (df["sparsity"] >= 0) & (df["sparsity"] < 1), "outside [0, 1)", required=True)
    for column in ("training_flops_multiplier", "inference_flops_multiplier"):
        check(column, df[column] > 0, "not a positive multiplier", required=False)
    for column in INTEGER_COLUMNS:
        numbers = df[column].astype("Float64")
        check(column, (numbers > 0) & (numbers == numbers.round()), "not a positive integer", required=False)
    check("task", df["task"] == TASK, f"expected {TASK!r}", required=True)
    check("metric", df["metric"] == METRIC, f"expected {METRIC!r}", required=True)
    check("source_status", df["source_status"].isin(SOURCE_STATUSES), f"not in {SOURCE_STATUSES}", required=True)
    if problems:
        raise ValueError("leaderboard breaks the schema:\n" + "\n".join(problems))


def read_leaderboard(path_csv: str | os.PathLike) -> pd.DataFrame:
    """Read an exported leaderboard CSV back with the schema's dtypes and validate it."""
    frame = pd.read_csv(path_csv, dtype={column: str for column in STRING_COLUMNS}, keep_default_na=False,
                        na_values={column: [""] for column in FLOAT_COLUMNS + INTEGER_COLUMNS})
    for column in (*INTERVAL_COLUMNS, "value_best"):  # CSVs written before these columns existed
        if column not in frame.columns:
            frame[column] = math.nan
    for column in ("selection", "protocol"):
        if column not in frame.columns:
            frame[column] = ""
    missing = [column for column in LEADERBOARD_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path_csv}: leaderboard columns missing {missing}")
    board = _with_dtypes(frame)
    validate_leaderboard(board)
    return board


def format_leaderboard_markdown(df: pd.DataFrame, title: str = "Leaderboard") -> str:
    """Markdown table of a leaderboard (multipliers to 3 decimals, '-' where unknown).

    ``value`` reads mean ± half-width of its 95% interval where there is one; the
    interval's ends themselves are in the CSV only.
    """
    def cell(value, column: str) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if column in ("value_std", "value_best"):
            return f"{value:.2f}"
        if column == "sparsity":
            return f"{value:.4f}"
        if column in ("training_flops_multiplier", "inference_flops_multiplier"):
            return f"{value:.3f}"
        return str(value).replace("|", "\\|") or "-"

    def value_cell(row) -> str:
        text = f"{row['value']:.2f}"
        if not (pd.isna(row["value_ci_low"]) or pd.isna(row["value_ci_high"])):
            text += f" ± {(row['value_ci_high'] - row['value_ci_low']) / 2:.2f}"
        return text

    shown = [column for column in LEADERBOARD_COLUMNS if column not in ("task", "metric", "value_ci_low",
                                                                        "value_ci_high")]
    lines = [f"# {title}", "", f"Task: {TASK}. Metric: {METRIC}.", "",
             "value: mean over seeds ± half-width of its 95% interval (t over seeds; with one seed the "
             "test-set binomial interval, which covers test-set sampling only); the interval's ends are "
             "`value_ci_low` and `value_ci_high` in the CSV. value_std: sample std over seeds. value is the "
             "final epoch's top-1 for our rows; value_best the mean of each run's best epoch at its final "
             "sparsity; selection: which epoch a published value is (best, final, unknown).", "",
             "| " + " | ".join(shown) + " |", "| " + " | ".join("---" for _ in shown) + " |"]
    lines += ["| " + " | ".join(value_cell(row) if column == "value" else cell(row[column], column)
                                for column in shown) + " |" for _, row in df.iterrows()]
    return "\n".join(lines) + "\n"


def export_leaderboard(df: pd.DataFrame, path_csv: str | os.PathLike) -> list[Path]:
    """Validate ``df`` and write it as CSV and as Markdown (same stem, ``.md``), atomically.

    Returns the two paths written.
    """
    validate_leaderboard(df)
    path_csv = Path(path_csv)
    csv_path = atomic_write_text(path_csv, df.to_csv(index=False))
    markdown_path = atomic_write_text(path_csv.with_suffix(".md"),
                                      format_leaderboard_markdown(df, title=f"Leaderboard: {path_csv.stem}"))
    return [csv_path, markdown_path]
