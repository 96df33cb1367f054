"""Aggregate finished runs over seeds and compare them with AC/DC and with published numbers.

One row of :func:`compare_table` is one (suite, dataset, model, method,
variant, target sparsity) cell: mean and sample standard deviation of top-1
over seeds, FLOP multipliers, the gap to our own AC/DC at that sparsity, and
the closest published number (see :func:`match_published`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

import pandas as pd

from acdc_bench.core.io import atomic_write_text
from acdc_bench.report.results import drop_superseded

log = logging.getLogger(__name__)

#: Our ids -> the names the published reference table uses (unknown ids pass through).
DATASET_NAMES = {
    "imagenet": "ImageNet", "cifar100": "CIFAR-100", "cifar10": "CIFAR-10",
    "mnist": "MNIST", "fashion-mnist": "Fashion-MNIST",
}
MODEL_NAMES = {
    "resnet50": "ResNet50", "wrn28-10": "WideResNet-28-10", "mobilenetv1": "MobileNetV1",
    "lenet-300-100": "LeNet-300-100",
}
METHOD_NAMES = {"acdc": "AC/DC", "rigl": "RigL", "gmp": "GMP", "str": "STR", "dense": "Dense"}
ACDC_METHOD = "acdc"
STATUS_PREFERENCE = {"verified": 0, "reported": 1, "unverified": 2}

GROUP_COLUMNS = ["suite", "dataset", "model", "method", "variant", "target_sparsity"]
COMPARE_COLUMNS = GROUP_COLUMNS + [
    "top1_mean", "top1_std", "seeds", "actual_sparsity", "training_flops_multiplier",
    "inference_flops_multiplier", "top1_dense_mean", "delta_vs_acdc",
    "published_top1", "published_source", "published_status", "delta_vs_published",
    "published_variant", "published_distribution", "published_citation",
    "distribution", "epochs", "run_ids", "calibration",
]
# Sparsities closer than this are the same target.
SPARSITY_TOLERANCE = 1e-6


def display_name(kind: str, identifier: str) -> str:
    """Published name of a dataset, model or method id (``kind`` is one of those three words)."""
    names = {"dataset": DATASET_NAMES, "model": MODEL_NAMES, "method": METHOD_NAMES}[kind]
    return names.get(str(identifier).lower(), str(identifier))


def name_key(name: str) -> str:
    """Case- and punctuation-free key, so 'ResNet-50' and 'resnet50' match."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def _variant_key(variant: str) -> str:
    """Training-length variant key: '' and '1x' are the standard schedule."""
    key = name_key(variant)
    return "" if key == "1x" else key


def _distribution_key(distribution: str) -> str:
    """Main distribution word: 'uniform (first layer dense)' -> 'uniform', 'ERK' -> 'erk'."""
    return name_key(str(distribution).split("(")[0])


def match_published(reference: pd.DataFrame, *, dataset: str, model: str, method: str,
                    target_sparsity: float, variant: str = "", distribution: str = "") -> pd.Series | None:
    """Return the published row best matching one of our cells, or None.

    Candidates share dataset, model, method (ids mapped through
    :data:`DATASET_NAMES`, :data:`MODEL_NAMES`, :data:`METHOD_NAMES`), target
    sparsity and variant (training length, '' == '1x': a 5x schedule is
    another experiment, so it is never matched to a 1x run). Among them:
    status verified > reported > unverified, then the same layer distribution
    (main word, then exact text), then file order.
    """
    if reference is None or reference.empty or target_sparsity is None or math.isnan(target_sparsity):
        return None
    candidates = reference[
        (reference["dataset"].map(name_key) == name_key(display_name("dataset", dataset)))
        & (reference["model"].map(name_key) == name_key(display_name("model", model)))
        & (reference["method"].map(name_key) == name_key(display_name("method", method)))
        & ((reference["target_sparsity"] - target_sparsity).abs() < SPARSITY_TOLERANCE)
    ]
    if candidates.empty:
        return None
    candidates = candidates[candidates["variant"].map(_variant_key) == _variant_key(variant)]
    if candidates.empty:
        return None
    other_distribution = candidates["distribution"].map(_distribution_key) != _distribution_key(distribution)
    other_exact_distribution = candidates["distribution"].str.lower() != str(distribution).lower()
    ranking = pd.DataFrame({
        "status": candidates["status"].map(STATUS_PREFERENCE).fillna(len(STATUS_PREFERENCE)),
        "distribution": other_distribution.astype(int),
        "exact_distribution": other_exact_distribution.astype(int),
        "order": range(len(candidates)),
    }, index=candidates.index)
    best = ranking.sort_values(["status", "distribution", "exact_distribution", "order"]).index[0]
    return candidates.loc[best]


def _acdc_top1(table: pd.DataFrame, row: pd.Series) -> float:
    """Our AC/DC top-1 mean in the same suite/dataset/model/sparsity as ``row`` (NaN if none).

    With several AC/DC variants: the one with ``row``'s variant, else the
    standard one (''), else NaN (ambiguous).
    """
    acdc = table[
        (table["method"] == ACDC_METHOD) & (table["suite"] == row["suite"])
        & (table["dataset"] == row["dataset"]) & (table["model"] == row["model"])
        & ((table["target_sparsity"] - row["target_sparsity"]).abs() < SPARSITY_TOLERANCE)
    ]
    for variant in (row["variant"], ""):
        same = acdc[acdc["variant"] == variant]
        if len(same) == 1:
            return float(same["top1_mean"].iloc[0])
    return float(acdc["top1_mean"].iloc[0]) if len(acdc) == 1 else math.nan


def _calibration_note(group: pd.DataFrame) -> str:
    """'seed 0: lam=0.00263, 11390 steps, run 3 of at most 5, accepted; ...' for the runs of a
    budget-calibration chain (STR under a matched budget), '' for other cells."""
    if "budget_calibration_iteration" not in group:
        return ""
    notes = []
    for row in group.sort_values("seed").itertuples():
        iteration = getattr(row, "budget_calibration_iteration", None)
        if iteration is None or pd.isna(iteration):
            continue
        accepted = getattr(row, "budget_calibration_within_tolerance", None)
        accepted = accepted is not None and not pd.isna(accepted) and bool(accepted)
        verdict = "accepted" if accepted else "not accepted (max runs reached)"
        started = getattr(row, "budget_calibration_started_from", None)
        notes.append(f"seed {int(row.seed)}: {row.budget_calibration_option}={row.budget_calibration_value:.3g}, "
                     f"{int(row.train_steps)} steps, run {int(iteration) + 1} of at most "
                     f"{int(row.budget_calibration_max_runs)}, {verdict}"
                     + (f", started from {started}" if isinstance(started, str) and started else ""))
    return "; ".join(notes)


def compare_table(runs: pd.DataFrame, reference: pd.DataFrame | None, *, suite: str | None = None) -> pd.DataFrame:
    """Aggregate finished runs per cell and attach the AC/DC and published comparisons.

    Columns (:data:`COMPARE_COLUMNS`): the group keys; ``top1_mean``,
    ``top1_std`` (sample std, NaN for one seed), ``seeds`` (runs aggregated),
    means of ``actual_sparsity``, ``training_flops_multiplier``,
    ``inference_flops_multiplier`` and ``top1_dense`` (``top1_dense_mean``);
    ``delta_vs_acdc`` (``top1_mean`` minus our AC/DC's at that sparsity);
    ``published_top1``, ``published_source`` (source_id), ``published_status``,
    ``delta_vs_published`` plus the matched row's variant, distribution and
    citation; and ``distribution``, ``epochs``, ``run_ids`` (';'-joined).
    Sorted by suite, dataset, model, sparsity, method, variant.
    """
    finished = drop_superseded(runs[runs["status"] == "finished"]).copy() if "status" in runs else runs.iloc[0:0].copy()
    if suite is not None:
        finished = finished[finished["suite"] == suite]
    if finished.empty:
        return pd.DataFrame({column: pd.Series(dtype="object") for column in COMPARE_COLUMNS})
    finished["variant"] = finished["variant"].fillna("").astype(str)
    finished["distribution"] = finished["distribution"].fillna("").astype(str)
    finished["target_sparsity"] = finished["target_sparsity"].round(6)

    rows = []
    for keys, group in finished.groupby(GROUP_COLUMNS, dropna=False, sort=True):
        duplicated = group["seed"][group["seed"].duplicated()]
        if len(duplicated):
            log.warning("%s: seeds %s appear in more than one run; all are averaged",
                        dict(zip(GROUP_COLUMNS, keys)), sorted(duplicated.unique().tolist()))
        top1 = group["top1"].astype(float)
        rows.append({
            **dict(zip(GROUP_COLUMNS, keys)),
            "top1_mean": top1.mean(),
            "top1_std": top1.std(ddof=1) if len(top1) > 1 else math.nan,
            "seeds": len(group),
            "actual_sparsity": group["actual_sparsity"].mean(),
            "training_flops_multiplier": group["training_flops_multiplier"].mean(),
            "inference_flops_multiplier": group["inference_flops_multiplier"].mean(),
            "top1_dense_mean": group["top1_dense"].mean(),
            "distribution": "/".join(sorted(group["distribution"].unique())),
            "epochs": group["epochs"].max(),
            "run_ids": ";".join(sorted(group["run_id"].astype(str))),
            "calibration": _calibration_note(group),
        })
    table = pd.DataFrame(rows)
    acdc_top1 = [_acdc_top1(table, row) for _, row in table.iterrows()]
    table["delta_vs_acdc"] = table["top1_mean"] - pd.Series(acdc_top1, index=table.index, dtype="float64")

    published = {"published_top1": [], "published_source": [], "published_status": [],
                 "published_variant": [], "published_distribution": [], "published_citation": []}
    for _, row in table.iterrows():
        match = match_published(reference, dataset=row["dataset"], model=row["model"], method=row["method"],
                                target_sparsity=row["target_sparsity"], variant=row["variant"],
                                distribution=row["distribution"])
        published["published_top1"].append(match["top1"] if match is not None else math.nan)
        for column, reference_column in (("published_source", "source_id"), ("published_status", "status"),
                                         ("published_variant", "variant"),
                                         ("published_distribution", "distribution"),
                                         ("published_citation", "source")):
            published[column].append(str(match.get(reference_column, "")) if match is not None else "")
    for column, values in published.items():
        table[column] = values
    table["published_top1"] = table["published_top1"].astype(float)
    table["delta_vs_published"] = table["top1_mean"] - table["published_top1"]
    table = table.sort_values(["suite", "dataset", "model", "target_sparsity", "method", "variant"])
    return table[COMPARE_COLUMNS].reset_index(drop=True)


def _number(value: float, digits: int = 2, *, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _display_rows(block: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of one sparsity block."""
    header = ["method", "variant", "top-1 %", "seeds", "sparsity", "train FLOPs x", "infer FLOPs x",
              "d vs AC/DC", "published top-1", "d vs published"]
    cells = []
    for _, row in block.iterrows():
        top1 = _number(row["top1_mean"])
        if not math.isnan(row["top1_std"]):
            top1 += f" ± {row['top1_std']:.2f}"
        published = "-"
        if not math.isnan(row["published_top1"]):
            published = f"{row['published_top1']:.2f} ({row['published_source']}, {row['published_status']})"
        cells.append([display_name("method", row["method"]), row["variant"] or "-", top1, str(int(row["seeds"])),
                      _number(row["actual_sparsity"], 4), _number(row["training_flops_multiplier"], 3),
                      _number(row["inference_flops_multiplier"], 3), _number(row["delta_vs_acdc"], signed=True),
                      published, _number(row["delta_vs_published"], signed=True)])
    return header, cells


def _blocks(table: pd.DataFrame):
    """Yield (title, rows) per (suite, dataset, model, target sparsity)."""
    for (suite, dataset, model, sparsity), block in table.groupby(
            ["suite", "dataset", "model", "target_sparsity"], sort=True, dropna=False):
        yield f"{suite}: {dataset} / {model}, target sparsity {sparsity:.1%}", block


def _text_table(header: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header] + cells) for i in range(len(header))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in [header] + cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _markdown_table(header: list[str], cells: list[list[str]]) -> str:
    def line(values):
        return "| " + " | ".join(value.replace("|", "\\|") for value in values) + " |"
    return "\n".join([line(header), line(["---"] * len(header))] + [line(row) for row in cells])


def format_compare(table: pd.DataFrame) -> str:
    """Render :func:`compare_table` for a terminal: one aligned block per target sparsity."""
    if table.empty:
        return "no finished runs to compare"
    return "\n\n".join(f"{title}\n{_text_table(*_display_rows(block))}" for title, block in _blocks(table))


def format_compare_markdown(table: pd.DataFrame) -> str:
    """Render :func:`compare_table` as Markdown, with the published sources cited at the end."""
    parts = ["# Comparison with AC/DC and published results", ""]
    if table.empty:
        return "\n".join(parts + ["No finished runs to compare.", ""])
    parts.append("top-1 is mean ± sample std over seeds (percent); d = difference in top-1 points; "
                 "FLOPs x = multiple of the dense run's FLOPs.")
    for title, block in _blocks(table):
        parts += ["", f"## {title}", "", _markdown_table(*_display_rows(block))]
    calibrated = table[table["calibration"].fillna("") != ""]
    if not calibrated.empty:
        parts += ["", "## Budget calibration", "",
                  "Under a matched budget these cells are the last run of a calibration chain that adjusts the "
                  "run length and the named option together (see README, FLOP accounting and budgets):", ""]
        parts += [f"- {display_name('method', row.method)} {row.target_sparsity:g}: {row.calibration}"
                  for row in calibrated.itertuples()]
    sources = table.loc[table["published_source"] != "", ["published_source", "published_citation"]].drop_duplicates()
    if not sources.empty:
        parts += ["", "## Published sources", ""]
        parts += [f"- `{row.published_source}`: {row.published_citation}" for row in sources.itertuples()]
    return "\n".join(parts) + "\n"


def write_compare(table: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``compare.md`` and ``compare.csv`` into ``out_dir`` atomically; return their paths."""
    out_dir = Path(out_dir)
    csv_path = atomic_write_text(out_dir / "compare.csv", table.to_csv(index=False))
    markdown_path = atomic_write_text(out_dir / "compare.md", format_compare_markdown(table))
    return [markdown_path, csv_path]
