"""Aggregate finished runs over seeds and compare them with AC/DC and with published numbers.

One row of :func:`compare_table` is one (suite, dataset, model, method,
variant, target sparsity) cell: mean and sample standard deviation of top-1
over seeds with its 95% interval, FLOP multipliers, the gap to our own AC/DC at
that sparsity (paired by seed, with its 95% interval and a verdict), and the
closest published number (see :func:`match_published`) with whether it lies
inside our interval. The statistics are those of :mod:`acdc_bench.report.stats`:

- top-1 interval: t over seeds; with one seed, the test-set binomial (Wilson)
  interval of its ``predictions.npz`` (no interval without one);
- gap to AC/DC: per-seed differences over the seeds both cells have, t-interval,
  verdict ``better``/``worse``/``tie`` (tie when the interval contains 0); with
  one seed in common, McNemar's exact test on the two runs' per-example
  predictions decides at alpha 0.05 (test-set sampling only); ``n/a`` otherwise,
  and ``verdict_basis`` says why.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from acdc_bench.config.cells import LENGTH_WORD, length_key
from acdc_bench.report.protocol import RUN_PROTOCOL_FIELDS
from acdc_bench.core.io import atomic_write_text
from acdc_bench.methods import SparsityMethod, find_method, get_method, method_names
from acdc_bench.report import stats
from acdc_bench.report.results import drop_superseded, select_runs
from acdc_bench.run import folder
from acdc_bench.run.store import RunStore

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
ACDC_METHOD = "acdc"
STATUS_PREFERENCE = {"verified": 0, "reported": 1, "unverified": 2}

#: One row of the comparison: a cell (what the runs were asked to compute, seeds aside:
#: :func:`acdc_bench.config.cell_id`) of one method, variant and target.
GROUP_COLUMNS = ["suite", "dataset", "model", "method", "variant", "target_sparsity", "cell"]
COMPARE_COLUMNS = GROUP_COLUMNS + ["differs", "train_subset", "numerics", "overrides", "budget_flag",
    "top1_mean", "top1_std", "seeds", "top1_ci_low", "top1_ci_high", "ci_kind", "top1_best_mean",
    "top1_best_std", "top1_best_ci_low", "top1_best_ci_high", "best_epochs",
    "actual_sparsity", "training_flops_multiplier", "inference_flops_multiplier", "top1_dense_mean",
    "delta_vs_acdc", "delta_vs_acdc_ci_low", "delta_vs_acdc_ci_high", "verdict_vs_acdc", "verdict_basis",
    "paired_seeds", "published_top1", "published_source", "published_status", "published_selection",
    "published_runs", "delta_basis", "delta_vs_published", "delta_vs_published_best",
    "published_inside_ci", "published_inferred", "published_protocol", "published_variant", "published_distribution",
    "published_citation", "distribution", "epochs", *(f"protocol_{field}" for field in RUN_PROTOCOL_FIELDS),
    "run_ids", "calibration",
]
# Sparsities closer than this are the same target.
SPARSITY_TOLERANCE = 1e-6


def display_name(kind: str, identifier: str) -> str:
    """Published name of a dataset, model or method id (``kind`` is one of those three words); a
    method's is its class's ``display_name`` (plugins included), else its id."""
    if kind == "method":
        method = method_class(identifier)
        return (method.display_name or method.name) if method is not None else str(identifier)
    names = {"dataset": DATASET_NAMES, "model": MODEL_NAMES}[kind]
    return names.get(str(identifier).lower(), str(identifier))


def method_class(method: str) -> type[SparsityMethod] | None:
    """The registered class of a method id or of its published name ('AC/DC' -> ACDC), or None."""
    found = find_method(str(method).lower())
    if found is None:
        by_key = {name_key(get_method(name).display_name or name): name for name in method_names()}
        found = find_method(by_key.get(name_key(method), ""))
    return found


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


def protocol_differences(ours: dict | None, row) -> list[str]:
    """How a published row's protocol differs from a run's (:func:`acdc_bench.report.protocol.run_protocol`).

    Recipe family, sparsity denominator, label smoothing and training length must agree; a field
    the row does not publish is a difference ("label smoothing not published"). The batch size is
    not compared: the official codes of RigL and Gale et al. scale the learning rate linearly with
    it, and our suites run their recipes at batch 256 on that rule (a listed deviation).
    """
    if ours is None:
        return ["our run's protocol is unknown"]
    differences = []
    for field, words in (("recipe", "recipe"), ("denominator", "sparsity over"), ("label_smoothing", "label smoothing"),
                         ("length", "length")):
        theirs, mine = row.get(field, ""), ours.get(field, "")
        if isinstance(theirs, float) and math.isnan(theirs) or (isinstance(theirs, str) and not theirs
                                                                 and field != "denominator"):
            differences.append(f"{words} not published")
        elif isinstance(theirs, float):
            if mine is None or (isinstance(mine, float) and math.isnan(mine)) or abs(float(mine) - theirs) > 1e-6:
                differences.append(f"{words} {_protocol_text(mine)} here, {_protocol_text(theirs)} there")
        elif str(theirs).lower() != str(mine or "").lower():
            differences.append(f"{words} {mine or 'not recorded'} here, {theirs or 'not said'} there")
    if _extrapolated(ours):
        differences.append("method values extrapolated here (a suite entry marked unofficial), the published run's there")
    return differences


def _extrapolated(protocol: dict) -> bool:
    """Whether a run's protocol says its method values are extrapolated (True, or "True" read back from a CSV)."""
    return str(protocol.get("extrapolated", "")).lower() == "true"


def _protocol_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    return f"{float(value):g}"


def protocol_summary(protocol: dict | None) -> str:
    """One line for a protocol: ``rigl recipe, sparsity over all, label smoothing 0.1, 1x, batch 4096``."""
    if not protocol:
        return ""
    parts = []
    recipe, denominator = protocol.get("recipe"), protocol.get("denominator")
    parts.append(f"{recipe} recipe" if recipe else "recipe not said")
    if denominator:
        parts.append(f"sparsity over {denominator}")
    for field, text in (("label_smoothing", "label smoothing {}"), ("length", "{}x"), ("batch_size", "batch {}")):
        value = protocol.get(field)
        if value is not None and value != "" and not (isinstance(value, float) and math.isnan(value)):
            parts.append(text.format(f"{float(value):g}"))
    if _extrapolated(protocol):
        parts.append("extrapolated method values")
    return ", ".join(parts)


def run_protocol_of(row) -> dict | None:
    """The protocol columns of a compare/run row (``protocol_<field>``), or None when not recorded."""
    if not str(row.get("protocol_recipe", "") or "") and pd.isna(row.get("protocol_length", math.nan)):
        return None
    return {field: row.get(f"protocol_{field}") for field in RUN_PROTOCOL_FIELDS}


def match_published(reference: pd.DataFrame, *, dataset: str, model: str, method: str,
                    target_sparsity: float, variant: str = "", distribution: str = "",
                    protocol: dict | None = None) -> pd.Series | None:
    """Return the published row best matching one of our cells, or None.

    Candidates share dataset, model, method (ids mapped through
    :data:`DATASET_NAMES`, :data:`MODEL_NAMES`, a method's ``display_name``), target
    sparsity (or, when no row has that target, a reported sparsity within 5e-5:
    STR's published rows are filed under a nominal target, 0.965 for its 96.11%)
    and variant. A variant tag is read word by word (paper suites'
    ``reproduce.variants``, e.g. ``5x uniform``, ``2x uniform``, ``2:4``): the
    training length (``2x``; '' == ``1x``: a 5x schedule is another experiment,
    so it is never matched to a 1x run) and any other word but a distribution
    word (``2:4``) must be the row's; a distribution word (``global``,
    ``uniform``, ``erk``) restricts the rows to that distribution. Among them:
    the same protocol as ``protocol`` (:func:`protocol_differences`; the caller shows a row of
    another protocol without a difference), then status verified > reported > unverified, then
    the same layer distribution (main word, then exact text), then file order. An ``aggregator``
    row (Papers with Code) is never matched.
    """
    if reference is None or reference.empty or target_sparsity is None or math.isnan(target_sparsity):
        return None
    reference = reference[reference["status"] != "aggregator"]  # listed, never compared with
    distribution_words = ("global", "uniform", "erk")

    def parts(tag) -> tuple[str, tuple[str, ...], str]:
        """(length, other words, distribution word) of a variant tag; length '' for the suite's own."""
        words = str(tag if isinstance(tag, str) else "").lower().replace(",", " ").split()
        spread = next((w for w in words if w in distribution_words), "")
        rest = tuple(sorted(w for w in words if not LENGTH_WORD.fullmatch(w) and w not in distribution_words))
        return length_key(" ".join(words)), rest, spread

    same = ((reference["dataset"].map(name_key) == name_key(display_name("dataset", dataset)))
            & (reference["model"].map(name_key) == name_key(display_name("model", model)))
            & (reference["method"].map(name_key) == name_key(display_name("method", method))))
    candidates = reference[same & ((reference["target_sparsity"] - target_sparsity).abs() < SPARSITY_TOLERANCE)]
    if candidates.empty and "reported_sparsity" in reference:
        candidates = reference[same & ((reference["reported_sparsity"] - target_sparsity).abs() < 5e-5)]
    if candidates.empty:
        return None
    length, rest, spread = parts(variant)
    candidates = candidates[[parts(v)[:2] == (length, rest) for v in candidates["variant"]]]
    if spread:
        candidates = candidates[candidates["distribution"].map(_distribution_key) == spread]
        distribution = spread
    if candidates.empty:
        return None
    other_distribution = candidates["distribution"].map(_distribution_key) != _distribution_key(distribution)
    other_exact_distribution = candidates["distribution"].str.lower() != str(distribution).lower()
    ranking = pd.DataFrame({
        "protocol": [0 if protocol is None else len(protocol_differences(protocol, row))
                     for _, row in candidates.iterrows()],
        "status": candidates["status"].map(STATUS_PREFERENCE).fillna(len(STATUS_PREFERENCE)),
        "distribution": other_distribution.astype(int),
        "exact_distribution": other_exact_distribution.astype(int),
        "order": range(len(candidates)),
    }, index=candidates.index)
    best = ranking.sort_values(["protocol", "status", "distribution", "exact_distribution", "order"]).index[0]
    return candidates.loc[best]


def citation(row) -> str:
    """A published row's citation with the file it was read from: ``source (repository path at commit)``."""
    where = " ".join(str(row.get(column, "") or "") for column in ("repository", "path")).strip()
    commit = str(row.get("commit", "") or "")
    if where and commit:
        where += f" at {commit[:12]}"
    return f"{row.get('source', '')} ({where})" if where else str(row.get("source", ""))


def _first(values: pd.Series, default=None):
    """The first non-missing value of a column of one cell (its runs share it), else ``default``."""
    for value in values:
        if isinstance(value, (list, dict)) or not pd.isna(value):
            return value
    return default


#: A matched run whose measured training FLOPs are off its budget by more than this is flagged in every table.
BUDGET_FLAG_TOLERANCE = 0.02


def _budget_flag(group: pd.DataFrame) -> str:
    """Why a matched cell is not a matched comparison: a run whose achieved cost (measured FLOPs over
    the budget) is off by more than :data:`BUDGET_FLAG_TOLERANCE`; empty when every run held it."""
    if "budget_achieved_ratio" not in group or "budget_mode" not in group:
        return ""
    matched = group[group["budget_mode"] == "matched"]
    ratios = pd.to_numeric(matched["budget_achieved_ratio"], errors="coerce").dropna()
    off = ratios[(ratios - 1.0).abs() > BUDGET_FLAG_TOLERANCE]
    if off.empty:
        return ""
    return (f"over or under budget: {len(off)} of {len(matched)} matched run(s) spent "
            + ", ".join(f"{ratio:.3f}x" for ratio in off) + " of their budget")


def _differences(table: pd.DataFrame, finished: pd.DataFrame) -> list[str]:
    """For rows that share method, variant and target but not their cell: the config keys whose
    values differ between those cells (from one run's ``config.yaml`` each), as ``key=value``."""
    from acdc_bench.core.io import flatten

    ignore = ("seed", "run_id", "cell", "train_steps", "overrides", "budget", "method_options", "environment",
              "recipe", "epochs", "description", "data_root", "num_workers", "wandb", "resources", "plugins")
    configs = {}
    for cell, group in finished.groupby("cell", sort=False):
        try:
            store, run_id = RunStore.locate(str(group["run_dir"].iloc[0]))
            config = store.config(run_id) or {}
        except (folder.UnreadableConfig, KeyError):
            config = {}
        if (config.get("budget") or {}).get("mode") != "matched":
            ignore_here = tuple(k for k in ignore if k != "epochs")
        else:
            ignore_here = ignore
        configs[cell] = {k: v for k, v in flatten({k: v for k, v in config.items() if k not in ignore_here}, ".").items()
                         if ".targets." not in f".{k}."}
        configs[cell]["budget_mode"] = (config.get("budget") or {}).get("mode")
    texts = []
    for _, row in table.iterrows():
        siblings = table[(table["suite"] == row["suite"]) & (table["method"] == row["method"])
                         & (table["variant"] == row["variant"])
                         & ((table["target_sparsity"] - row["target_sparsity"]).abs() < SPARSITY_TOLERANCE)]
        if len(siblings) < 2:
            texts.append("")
            continue
        mine = configs.get(row["cell"], {})
        others = [configs.get(cell, {}) for cell in siblings["cell"] if cell != row["cell"]]
        keys = sorted({key for other in others for key in set(mine) | set(other) if mine.get(key) != other.get(key)})
        texts.append(", ".join(f"{key}={mine.get(key)}" for key in keys) or "(same config, another cell id)")
    return texts


def _acdc_index(table: pd.DataFrame, row: pd.Series):
    """Index of our AC/DC cell in the same suite/dataset/model/sparsity as ``row`` (None if none).

    With several AC/DC variants: the one with ``row``'s variant, else the
    standard one (''), else None (ambiguous).
    """
    acdc = table[
        (table["method"] == ACDC_METHOD) & (table["suite"] == row["suite"])
        & (table["dataset"] == row["dataset"]) & (table["model"] == row["model"])
        & ((table["target_sparsity"] - row["target_sparsity"]).abs() < SPARSITY_TOLERANCE)
    ]
    # Only an AC/DC trained on the same data subset under the same numerics is a reference.
    def text(value) -> str:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)

    same_data = (acdc["train_subset"].map(text) == text(row["train_subset"])) & (acdc["numerics"] == row["numerics"])
    acdc = acdc[same_data]
    for variant in (row["variant"], ""):
        same = acdc[acdc["variant"] == variant]
        if len(same) == 1:
            return same.index[0]
    return acdc.index[0] if len(acdc) == 1 else None


def _load_predictions(run_dir, top1: float) -> tuple[dict | None, str]:
    """The run's ``predictions.npz`` arrays, or None and why there are none usable.

    Predictions whose accuracy differs from ``result.json``'s top-1 by more than one test
    example (a stale file) are not used.
    """
    if not isinstance(run_dir, str) or not run_dir:
        return None, "no run folder"
    try:
        store, run_id = RunStore.locate(run_dir)
        predictions = store.predictions(run_id)
    except ValueError as error:
        log.warning("%s", error)
        return None, "predictions.npz unreadable"
    if predictions is None:
        return None, "no predictions.npz"
    targets, final = predictions["targets"], predictions["final"]
    if len(targets) == 0:
        return None, "predictions.npz is empty"
    accuracy = 100 * float(np.mean(final == targets))
    if abs(accuracy - top1) > 100 / len(targets) + 1e-9:
        log.warning("%s: predictions.npz gives top-1 %.4f, result.json %.4f; predictions not used",
                    run_dir, accuracy, top1)
        return None, "predictions.npz disagrees with result.json"
    return predictions, ""


def _top1_interval(top1: pd.Series, predictions: tuple[dict | None, str]) -> stats.Interval:
    """95% interval of a cell's mean top-1: t over seeds, or the binomial interval of one seed."""
    if len(top1) >= 2:
        return stats.mean_interval(top1.tolist())
    arrays, why = predictions
    if arrays is None:
        return stats.Interval(float(top1.iloc[0]), math.nan, math.nan, f"none: 1 seed, {why}")
    return stats.binomial_interval(int(np.sum(arrays["final"] == arrays["targets"])), len(arrays["targets"]))


def _versus_acdc(cell: dict, acdc: dict | None, is_acdc: bool) -> dict:
    """``delta_vs_acdc`` with its interval, verdict, basis and paired seed count for one cell.

    ``cell`` and ``acdc`` map ``top1_by_seed`` (seed -> mean top-1) and ``predictions``
    (seed -> ``_load_predictions`` answer, for seeds with exactly one run).
    """
    def answer(delta=math.nan, low=math.nan, high=math.nan, verdict=stats.NO_VERDICT, basis="", paired=0):
        return {"delta_vs_acdc": delta, "delta_vs_acdc_ci_low": low, "delta_vs_acdc_ci_high": high,
                "verdict_vs_acdc": verdict, "verdict_basis": basis, "paired_seeds": paired}

    if acdc is None:
        return answer(basis="no single AC/DC cell at this sparsity")
    if is_acdc:
        return answer(delta=0.0, basis="AC/DC itself", paired=len(cell["top1_by_seed"]))
    difference = stats.paired_difference(cell["top1_by_seed"], acdc["top1_by_seed"])
    seeds = sorted(set(cell["top1_by_seed"]) & set(acdc["top1_by_seed"]))
    if not seeds:
        return answer(basis="no seed in common with AC/DC")
    if difference.known:
        return answer(difference.estimate, difference.low, difference.high, stats.verdict(difference),
                      difference.kind, len(seeds))
    seed = seeds[0]
    one_seed = f"1 seed in common ({seed:g})"
    arrays = []
    for side, whose in ((cell, "this method"), (acdc, "AC/DC")):
        if seed not in side["predictions"]:
            return answer(difference.estimate, basis=f"{one_seed}, several runs of that seed for {whose}", paired=1)
        predictions, why = side["predictions"][seed]
        if predictions is None:
            return answer(difference.estimate, basis=f"{one_seed}, {why} for {whose}", paired=1)
        arrays.append(predictions)
    ours, theirs = arrays
    if not np.array_equal(ours["targets"], theirs["targets"]):
        return answer(difference.estimate, basis=f"{one_seed}, predictions of different test examples", paired=1)
    test = stats.mcnemar_exact(ours["targets"], ours["final"], theirs["final"])
    basis = (f"McNemar exact p={test.p_value:.3g} on seed {seed:g} ({test.only_a} vs {test.only_b} "
             f"discordant examples): {stats.TEST_SET_ONLY}")
    return answer(difference.estimate, test.difference.low, test.difference.high, stats.mcnemar_verdict(test),
                  basis, 1)


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
    ``top1_ci_low``/``top1_ci_high`` (95% interval of the mean, NaN when there is
    none) and ``ci_kind`` (how it was computed, e.g. ``t over 3 seeds``, or why
    there is none); means of ``actual_sparsity``, ``training_flops_multiplier``,
    ``inference_flops_multiplier`` and ``top1_dense`` (``top1_dense_mean``);
    ``delta_vs_acdc`` (mean over the seeds both have of top-1 minus our AC/DC's
    at that sparsity; 0 for AC/DC itself) with ``delta_vs_acdc_ci_low``/``_high``,
    ``verdict_vs_acdc`` (``better``, ``worse``, ``tie`` or ``n/a``),
    ``verdict_basis`` (the test used, or why there is no verdict) and
    ``paired_seeds``; ``published_top1``, ``published_source`` (source_id),
    ``published_status``, ``delta_vs_published``, ``published_inside_ci``
    (nullable boolean: the published number lies in our 95% interval) plus the
    matched row's variant, distribution and citation; and ``distribution``,
    ``epochs``, ``run_ids`` (';'-joined).
    Sorted by suite, dataset, model, sparsity, method, variant.
    """
    if "status" in runs:
        selected, notices = select_runs(runs)
        for notice in notices:
            log.warning(notice)
        finished = drop_superseded(selected[selected["status"] == "finished"]).copy()
    else:
        finished = runs.iloc[0:0].copy()
    if suite is not None:
        finished = finished[finished["suite"] == suite]
    if finished.empty:
        return pd.DataFrame({column: pd.Series(dtype="object") for column in COMPARE_COLUMNS})
    finished["variant"] = finished["variant"].fillna("").astype(str)
    finished["distribution"] = finished["distribution"].fillna("").astype(str)
    finished["target_sparsity"] = finished["target_sparsity"].round(6)
    for column in ("cell", "numerics_mode", "train_subset"):
        if column not in finished:
            finished[column] = math.nan
    finished["cell"] = finished["cell"].astype(object).fillna("").astype(str)

    rows, cells = [], []
    for keys, group in finished.groupby(GROUP_COLUMNS, dropna=False, sort=True):
        top1 = group["top1"].astype(float)
        run_dirs = group["run_dir"] if "run_dir" in group else pd.Series("", index=group.index)
        single = ~group["seed"].duplicated(keep=False)
        predictions = {seed: _load_predictions(run_dir, value) for seed, run_dir, value
                       in zip(group["seed"][single], run_dirs[single], top1[single])}
        cells.append({"top1_by_seed": top1.groupby(group["seed"]).mean().to_dict(), "predictions": predictions})
        only_run = next(iter(predictions.values())) if len(group) == 1 else (None, "")
        interval = _top1_interval(top1, only_run)
        rows.append({
            **dict(zip(GROUP_COLUMNS, keys)),
            "top1_mean": top1.mean(),
            "top1_std": top1.std(ddof=1) if len(top1) > 1 else math.nan,
            "seeds": len(group),
            "top1_ci_low": interval.low,
            "top1_ci_high": interval.high,
            "ci_kind": interval.kind,
            **_best(group),
            "actual_sparsity": group["actual_sparsity"].mean(),
            "training_flops_multiplier": group["training_flops_multiplier"].mean(),
            "inference_flops_multiplier": group["inference_flops_multiplier"].mean(),
            "top1_dense_mean": group["top1_dense"].mean(),
            "distribution": "/".join(sorted(group["distribution"].unique())),
            "epochs": group["epochs"].max(),
            "run_ids": ";".join(sorted(group["run_id"].astype(str))),
            "calibration": _calibration_note(group),
            "train_subset": _first(group["train_subset"]),
            "numerics": _first(group["numerics_mode"], "native"),
            "overrides": " ".join(_first(group["overrides"], []) or []) if "overrides" in group else "",
            "budget_flag": _budget_flag(group),
            **{f"protocol_{field}": _first(group[f"protocol_{field}"], "") if f"protocol_{field}" in group else ""
               for field in RUN_PROTOCOL_FIELDS},
        })
    table = pd.DataFrame(rows)
    table["differs"] = _differences(table, finished)
    versus = []
    for index, row in table.iterrows():
        acdc_index = _acdc_index(table, row)
        versus.append(_versus_acdc(cells[index], None if acdc_index is None else cells[acdc_index],
                                   is_acdc=acdc_index == index))
    for column in ("delta_vs_acdc", "delta_vs_acdc_ci_low", "delta_vs_acdc_ci_high", "verdict_vs_acdc",
                   "verdict_basis", "paired_seeds"):
        table[column] = [answer[column] for answer in versus]
    for column in ("delta_vs_acdc", "delta_vs_acdc_ci_low", "delta_vs_acdc_ci_high"):
        table[column] = table[column].astype("float64")

    published = {"published_top1": [], "published_source": [], "published_status": [], "published_selection": [],
                 "published_runs": [], "published_variant": [], "published_distribution": [],
                 "published_citation": [], "published_protocol": [], "published_inferred": []}
    for _, row in table.iterrows():
        protocol = run_protocol_of(row)
        match = match_published(reference, dataset=row["dataset"], model=row["model"], method=row["method"],
                                target_sparsity=row["target_sparsity"], variant=row["variant"],
                                distribution=row["distribution"], protocol=protocol)
        differences = protocol_differences(protocol, match) if match is not None else []
        published["published_protocol"].append("other protocol: " + "; ".join(differences) if differences else "")
        published["published_top1"].append(match["top1"] if match is not None else math.nan)
        published["published_runs"].append(float(match.get("runs", math.nan)) if match is not None else math.nan)
        for column, reference_column in (("published_source", "source_id"), ("published_status", "status"),
                                         ("published_selection", "selection"),
                                         ("published_variant", "variant"),
                                         ("published_distribution", "distribution"),
                                         ("published_inferred", "inferred")):
            published[column].append(str(match.get(reference_column, "")) if match is not None else "")
        published["published_citation"].append(citation(match) if match is not None else "")
    for column, values in published.items():
        table[column] = values
    table["published_top1"] = table["published_top1"].astype(float)
    table["published_runs"] = table["published_runs"].astype(float)
    # A published best-epoch number is set beside our best-epoch statistic, any other beside our final one
    best = table["published_selection"] == "best"
    table["delta_basis"] = ["" if pd.isna(p) else ("best" if b else "final")
                            for p, b in zip(table["published_top1"], best)]
    ours = table["top1_best_mean"].where(best, table["top1_mean"])
    # a row of another protocol is shown, never differenced
    comparable = table["published_protocol"] == ""
    table["delta_vs_published"] = (ours - table["published_top1"]).where(comparable)
    # a number whose source does not say which epoch it is: set beside our best epoch too
    unknown = comparable & (table["published_selection"] == "unknown")
    table["delta_vs_published_best"] = (table["top1_best_mean"] - table["published_top1"]).where(unknown)
    table.loc[~comparable, "delta_basis"] = ""
    # against the interval of the same selection (a best-epoch interval: t over seeds, 2 seeds or more)
    lows = table["top1_best_ci_low"].where(best, table["top1_ci_low"])
    highs = table["top1_best_ci_high"].where(best, table["top1_ci_high"])
    inside = [pd.NA if not same or math.isnan(published) or math.isnan(low) or math.isnan(high)
              else low <= published <= high
              for published, low, high, same in zip(table["published_top1"], lows, highs, comparable)]
    table["published_inside_ci"] = pd.array(inside, dtype="boolean")
    table = table.sort_values(["suite", "dataset", "model", "target_sparsity", "method", "variant"])
    return table[COMPARE_COLUMNS].reset_index(drop=True)


def _best(group: pd.DataFrame) -> dict:
    """The cell's best-epoch top-1 (mean and std over seeds) and each seed's best epoch (1-based)."""
    best = pd.to_numeric(group.get("top1_best", pd.Series(math.nan, index=group.index)), errors="coerce")
    epochs = pd.to_numeric(group.get("best_epoch", pd.Series(math.nan, index=group.index)), errors="coerce")
    known = bool(best.notna().all())
    interval = stats.mean_interval(best.tolist()) if known and len(best) >= 2 else None
    return {"top1_best_mean": best.mean() if known else math.nan,
            "top1_best_std": best.std(ddof=1) if known and len(best) > 1 else math.nan,
            "top1_best_ci_low": interval.low if interval else math.nan,
            "top1_best_ci_high": interval.high if interval else math.nan,
            "best_epochs": " ".join(str(int(e) + 1) for e in epochs) if known else ""}


def _number(value: float, digits: int = 2, *, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _interval_text(low: float, high: float, *, signed: bool = False) -> str:
    """'[87.20, 89.80]', or '-' when there is no interval."""
    if math.isnan(low) or math.isnan(high):
        return "-"
    return f"[{_number(low, signed=signed)}, {_number(high, signed=signed)}]"


def _label(row) -> str:
    label = display_name("method", row["method"]) + (f" {row['variant']}" if row["variant"] else "")
    return label + (f" [{row['differs']}]" if row.get("differs") else "")


def _display_rows(block: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of one sparsity block."""
    header = ["method", "variant", "recipe", "top-1 %", "95% CI", "best-epoch top-1", "seeds", "sparsity", "train FLOPs x",
              "infer FLOPs x", "d vs AC/DC", "d 95% CI", "verdict", "published top-1", "d vs published",
              "published in CI"]
    cells = []
    for _, row in block.iterrows():
        top1 = _number(row["top1_mean"])
        if not math.isnan(row["top1_std"]):
            top1 += f" ± {row['top1_std']:.2f}"
        best = _number(row["top1_best_mean"])
        if not math.isnan(row["top1_best_std"]):
            best += f" ± {row['top1_best_std']:.2f}"
        published = "-"
        if not math.isnan(row["published_top1"]):
            published = (f"{row['published_top1']:.2f} ({row['published_source']}, {row['published_status']}, "
                         f"{row['published_selection']} epoch"
                         + (", other protocol" if row.get("published_protocol") else "") + ")")
        inside = row["published_inside_ci"]
        method = display_name("method", row["method"]) + (" *" if row.get("differs") or row.get("budget_flag") else "")
        delta = _number(row["delta_vs_published"], signed=True)
        if row["delta_basis"]:
            delta += f" ({row['delta_basis']})"
        if not pd.isna(row.get("delta_vs_published_best", math.nan)):
            delta += f" / {_number(row['delta_vs_published_best'], signed=True)} (best)"
        cells.append([method, row["variant"] or "-", row.get("protocol_recipe") or "-", top1,
                      _interval_text(row["top1_ci_low"], row["top1_ci_high"]), best, str(int(row["seeds"])),
                      _number(row["actual_sparsity"], 4), _number(row["training_flops_multiplier"], 3),
                      _number(row["inference_flops_multiplier"], 3), _number(row["delta_vs_acdc"], signed=True),
                      _interval_text(row["delta_vs_acdc_ci_low"], row["delta_vs_acdc_ci_high"], signed=True),
                      row["verdict_vs_acdc"], published, delta,
                      "-" if pd.isna(inside) else ("inside" if inside else "outside")])
    return header, cells


def _interval_notes(block: pd.DataFrame) -> list[str]:
    """One line per row: how its top-1 interval and its AC/DC verdict were computed."""
    notes = []
    for _, row in block.iterrows():
        note = f"{_label(row)}: top-1 CI {row['ci_kind']}"
        if row["verdict_basis"] != "AC/DC itself":
            note += f"; vs AC/DC {row['verdict_vs_acdc']}: {row['verdict_basis']}"
        if row.get("budget_flag"):
            note += f"; NOT a matched comparison: {row['budget_flag']}"
        if row.get("published_protocol"):
            note += (f"; {row['published_source']} {row['published_top1']:.2f} is shown, not compared: "
                     f"{row['published_protocol']}")
        elif row.get("published_selection") == "best":
            note += (f"; {row['published_source']} is a best-epoch number, set beside our best-epoch top-1"
                     + (" (selected on ImageNet's validation set, which is also its test set: optimistic)"
                        if "imagenet" in str(row["dataset"]).lower() else ""))
        elif row.get("published_selection") == "unknown" and row.get("published_source"):
            note += (f"; {row['published_source']} does not say which epoch: set beside our final top-1 and, "
                     f"as d (best), our best-epoch top-1; the interval test is the final one's")
        if row.get("published_inferred") and row.get("published_source"):
            note += f"; inferred in {row['published_source']}'s row, not read: {row['published_inferred']}"
        notes.append(note)
    return notes


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
    return "\n\n".join(f"{title}\n{_text_table(*_display_rows(block))}\n"
                       + "\n".join(f"  {note}" for note in _interval_notes(block))
                       for title, block in _blocks(table))


def format_compare_markdown(table: pd.DataFrame) -> str:
    """Render :func:`compare_table` as Markdown, with the published sources cited at the end."""
    parts = ["# Comparison with AC/DC and published results", ""]
    if table.empty:
        return "\n".join(parts + ["No finished runs to compare.", ""])
    parts.append("top-1 is the final epoch's, mean ± sample std over seeds (percent); best-epoch top-1 is each "
                 "run's best test top-1 over the epochs at its final sparsity (AC/DC's dense epochs and GMP's ramp "
                 "excluded), as published best-epoch checkpoints are selected; d = difference in top-1 points, "
                 "against a published number taken on the same selection (`(best)` or `(final)`; a number whose "
                 "source does not say which epoch it is gets both, `(final) / (best)`); FLOPs x = "
                 "multiple of the dense run's FLOPs.")
    parts += ["", "95% CI of top-1: t-interval over seeds; with one seed, the test-set binomial (Wilson) "
              "interval, which covers test-set sampling only. d vs AC/DC is paired by seed (the seeds both "
              "cells have) with the t-interval of the per-seed differences; verdict `better` / `worse` when "
              "that interval lies above / below 0, `tie` when it contains 0. With one seed in common, "
              "McNemar's exact test on the two runs' per-example predictions decides at alpha 0.05 "
              "(test-set sampling only; its interval is the exact interval of the discordant examples). "
              "`n/a`: no verdict, the note under the table says why."]
    for title, block in _blocks(table):
        parts += ["", f"## {title}", "", _markdown_table(*_display_rows(block)), ""]
        parts += [f"- {note}" for note in _interval_notes(block)]
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
