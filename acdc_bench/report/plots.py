"""Draw a suite's figures (PNG and SVG) from its runs, their metrics and the published numbers.

:func:`plot_all` writes, per suite:

- ``top1_vs_sparsity_<dataset>_<model>``: mean top-1 over seeds (error bar:
  its 95% interval, see :mod:`acdc_bench.report.compare`) against achieved
  sparsity, one line per method and variant; published numbers as hollow
  markers labelled "(published)";
- ``top1_vs_training_flops_<dataset>_<model>``: the same accuracies against the
  training-FLOP multiplier (the matched-budget picture);
- ``delta_vs_acdc``: each method's top-1 difference to AC/DC at the same
  sparsity (paired by seed) with its 95% interval, one row per (method,
  sparsity), a vertical line at zero, the verdict beside each row;
- ``trajectories``: one representative run per method, sparsity and cumulative
  training FLOPs per epoch (AC/DC's compressed phases shaded);
- ``acdc_mask_overlap``: for AC/DC runs, IoU of each compressed phase's mask
  with the previous one's.

Figures are drawn on the Agg canvas without pyplot, so no global backend state
changes. A figure with nothing to show is skipped with a logged warning, and
a figure that fails is logged and skipped: plotting never stops a report.
SVGs carry no date and fixed element ids, so re-exporting the same runs gives
byte-identical files.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from acdc_bench.core.io import atomic_write_bytes
from acdc_bench.report.compare import ACDC_METHOD, compare_table, display_name, method_class, name_key
from acdc_bench.report.results import drop_superseded, load_metrics

log = logging.getLogger(__name__)

#: Colours and marker shapes of a method that does not declare its own (``color``, ``marker`` on
#: its class), and of a published method this project does not run; picked from its id.
FALLBACK_COLORS = ["tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
FALLBACK_MARKERS = ["v", "P", "X", "h", "<", ">"]
IMAGE_FORMATS = ("png", "svg")
SPARSITY_LABEL = "sparsity (% of prunable weights that are zero)"
TOP1_LABEL = "top-1 test accuracy (%), error bars: 95% interval"


def _style(method: str, declared: str, fallbacks: list[str]) -> str:
    """A method's declared style (``color`` or ``marker`` of its class), else one picked from its id."""
    found = method_class(method)
    style = getattr(found, declared) if found is not None else None
    method_id = found.name if found is not None else str(method).lower()
    return style or fallbacks[sum(map(ord, method_id)) % len(fallbacks)]


def method_color(method: str) -> str:
    """Colour of a method (an id or a published name), shared by all figures, ours and published."""
    return _style(method, "color", FALLBACK_COLORS)


def published_marker(method: str) -> str:
    """Hollow-marker shape of a method's published points."""
    return _style(method, "marker", FALLBACK_MARKERS)


def _new_figure(width: float = 7.0, height: float = 4.8, **subplot_kwargs):
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(**subplot_kwargs)


def _slug(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z.]+", "-", str(text)).strip("-").lower()


def _save(figure: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``figure`` as ``<stem>.png`` and ``<stem>.svg`` atomically; return the paths."""
    paths = []
    for image_format in IMAGE_FORMATS:
        buffer = io.BytesIO()
        metadata = {"Date": None} if image_format == "svg" else None
        # A fixed salt makes the SVG's element ids (clip paths, markers) the same on every
        # export, so a regenerated leaderboard plot only differs where the data do.
        with matplotlib.rc_context({"svg.hashsalt": f"acdc_bench:{stem}"}):
            figure.savefig(buffer, format=image_format, dpi=150, metadata=metadata)
        paths.append(atomic_write_bytes(out_dir / f"{stem}.{image_format}", buffer.getvalue()))
    return paths


def _ci_errors(rows: pd.DataFrame, value: str, low: str, high: str) -> list:
    """Asymmetric error-bar lengths (below, above) of ``value`` to its interval; 0 where none (arrays:
    matplotlib converts a one-row Series element by element, which pandas deprecates)."""
    return [(rows[value] - rows[low]).fillna(0).clip(lower=0).to_numpy(),
            (rows[high] - rows[value]).fillna(0).clip(lower=0).to_numpy()]


def _published_for(reference: pd.DataFrame | None, dataset: str, model: str) -> pd.DataFrame:
    """Published rows of one of our dataset/model ids, with an ``x_sparsity`` column."""
    if reference is None or reference.empty:
        return pd.DataFrame()
    rows = reference[(reference["dataset"].map(name_key) == name_key(display_name("dataset", dataset)))
                     & (reference["model"].map(name_key) == name_key(display_name("model", model)))].copy()
    rows["x_sparsity"] = rows["reported_sparsity"].fillna(rows["target_sparsity"])
    return rows


def _plot_published(axes, published: pd.DataFrame, x_column: str, x_scale: float = 1.0) -> int:
    """Hollow markers for published points, one legend entry per method; returns points drawn."""
    published = published.dropna(subset=[x_column, "top1"])
    for method, rows in published.groupby("method", sort=True):
        axes.scatter(rows[x_column] * x_scale, rows["top1"], marker=published_marker(method), s=55,
                     facecolors="none", edgecolors=method_color(method), linewidths=1.4, zorder=3,
                     label=f"{method} (published)")
    return len(published)


def _legend(axes) -> None:
    """Legend with our series first, published ones after."""
    handles, labels = axes.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda index: ("(published)" in labels[index], index))
    axes.legend([handles[index] for index in order], [labels[index] for index in order], fontsize="small")


def _suite_pairs(table: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted(set(zip(table["dataset"], table["model"])))


def plot_top1_vs_sparsity(table: pd.DataFrame, reference: pd.DataFrame | None, out_dir: Path,
                          suite: str) -> list[Path]:
    """Figure (a): top-1 against achieved sparsity, ours with error bars, published hollow."""
    written = []
    for dataset, model in _suite_pairs(table):
        ours = table[(table["dataset"] == dataset) & (table["model"] == model)].copy()
        ours["x_sparsity"] = ours["actual_sparsity"].fillna(ours["target_sparsity"])
        figure, axes = _new_figure()
        for (method, variant), rows in ours.groupby(["method", "variant"], sort=True):
            label = display_name("method", method) + (f" {variant}" if variant else "")
            rows = rows.sort_values("x_sparsity")
            if method == "dense" and (rows["x_sparsity"] < 1e-9).all():
                mean, low, high = rows[["top1_mean", "top1_ci_low", "top1_ci_high"]].iloc[0]
                axes.axhline(mean, color=method_color(method), linestyle=":", label=f"{label} (ours)")
                if not (math.isnan(low) or math.isnan(high)):
                    axes.axhspan(low, high, color=method_color(method), alpha=0.1)
                continue
            axes.errorbar((rows["x_sparsity"] * 100).to_numpy(), rows["top1_mean"].to_numpy(),
                          yerr=_ci_errors(rows, "top1_mean", "top1_ci_low", "top1_ci_high"),
                          marker="o", capsize=3, color=method_color(method), label=label,
                          linestyle="-" if not variant else "--")
        _plot_published(axes, _published_for(reference, dataset, model), "x_sparsity", x_scale=100)
        axes.set_xlabel(SPARSITY_LABEL)
        axes.set_ylabel(TOP1_LABEL)
        axes.set_title(f"{display_name('dataset', dataset)} / {display_name('model', model)}: "
                       f"top-1 vs sparsity ({suite})")
        axes.grid(alpha=0.3)
        _legend(axes)
        written += _save(figure, out_dir, f"top1_vs_sparsity_{_slug(dataset)}_{_slug(model)}")
    return written


def plot_top1_vs_training_flops(table: pd.DataFrame, reference: pd.DataFrame | None, out_dir: Path,
                                suite: str) -> list[Path]:
    """Figure (b): top-1 against the training-FLOP multiplier, labelled with sparsity."""
    written = []
    for dataset, model in _suite_pairs(table):
        ours = table[(table["dataset"] == dataset) & (table["model"] == model)]
        ours = ours.dropna(subset=["training_flops_multiplier", "top1_mean"])
        published = _published_for(reference, dataset, model)
        if ours.empty:
            log.warning("%s %s/%s: no training-FLOP multipliers; top-1 vs training FLOPs skipped",
                        suite, dataset, model)
            continue
        figure, axes = _new_figure()
        for (method, variant), rows in ours.groupby(["method", "variant"], sort=True):
            rows = rows.sort_values("training_flops_multiplier")
            axes.errorbar(rows["training_flops_multiplier"].to_numpy(), rows["top1_mean"].to_numpy(),
                          yerr=_ci_errors(rows, "top1_mean", "top1_ci_low", "top1_ci_high"),
                          marker="o", capsize=3, color=method_color(method),
                          label=display_name("method", method) + (f" {variant}" if variant else ""),
                          linestyle="-" if not variant else "--")
            for row in rows.itertuples():
                axes.annotate(f"{row.target_sparsity:.0%}", (row.training_flops_multiplier, row.top1_mean),
                              textcoords="offset points", xytext=(4, 4), fontsize="x-small",
                              color=method_color(method))
        if not published.empty:
            _plot_published(axes, published, "train_flops_mult")
        axes.axvline(1.0, color="gray", linewidth=0.8, linestyle=":")
        axes.set_xlabel("training FLOPs (multiple of the dense run's training FLOPs)")
        axes.set_ylabel(TOP1_LABEL)
        axes.set_title(f"{display_name('dataset', dataset)} / {display_name('model', model)}: "
                       f"top-1 vs training cost ({suite})")
        axes.grid(alpha=0.3)
        _legend(axes)
        written += _save(figure, out_dir, f"top1_vs_training_flops_{_slug(dataset)}_{_slug(model)}")
    return written


def plot_delta_vs_acdc(table: pd.DataFrame, out_dir: Path, suite: str) -> list[Path]:
    """Each method's paired top-1 difference to AC/DC with its 95% interval, one row per cell.

    Rows without an interval (no verdict) are drawn as hollow points; each row's label gives
    the verdict and how it was reached (paired seeds, or McNemar on one seed's test set).
    """
    rows = table[(table["method"] != ACDC_METHOD) & table["delta_vs_acdc"].notna()]
    if rows.empty:
        log.warning("%s: no method has a difference to AC/DC; delta-vs-AC/DC plot skipped", suite)
        return []
    several_pairs = len(_suite_pairs(rows)) > 1
    rows = rows.sort_values(["dataset", "model", "target_sparsity", "method", "variant"]).reset_index(drop=True)
    figure, axes = _new_figure(7.5, 1.2 + 0.45 * len(rows))
    positions = list(range(len(rows)))[::-1]  # first row on top
    labels = []
    for position, row in zip(positions, rows.itertuples()):
        color = method_color(row.method)
        known = not (math.isnan(row.delta_vs_acdc_ci_low) or math.isnan(row.delta_vs_acdc_ci_high))
        if known:
            axes.errorbar([row.delta_vs_acdc], [position], capsize=3, marker="o", color=color,
                          xerr=[[max(0.0, row.delta_vs_acdc - row.delta_vs_acdc_ci_low)],
                                [max(0.0, row.delta_vs_acdc_ci_high - row.delta_vs_acdc)]])
        else:
            axes.scatter([row.delta_vs_acdc], [position], marker="o", facecolors="none", edgecolors=color)
        basis = ("McNemar, test set only" if row.verdict_basis.startswith("McNemar")
                 else f"{row.paired_seeds} paired seeds" if known else "no interval")
        where = f"{display_name('dataset', row.dataset)}/{display_name('model', row.model)} " if several_pairs else ""
        labels.append(f"{where}{display_name('method', row.method)}{' ' + row.variant if row.variant else ''} "
                      f"{row.target_sparsity:.0%}: {row.verdict_vs_acdc} ({basis})")
    axes.axvline(0.0, color="gray", linewidth=1.0)
    axes.set_yticks(positions, labels, fontsize="small")
    axes.set_ylim(-0.7, len(rows) - 0.3)
    axes.set_xlabel("top-1 minus AC/DC's at the same sparsity (points), 95% interval")
    axes.set_title(f"Difference to AC/DC, paired by seed ({suite})")
    axes.grid(alpha=0.3, axis="x")
    return _save(figure, out_dir, "delta_vs_acdc")


HEADLINE_SPARSITY = 0.9  # the AC/DC paper's headline sparsity


def _focus_sparsity(runs: pd.DataFrame) -> float:
    """Target sparsity shared by the most methods, dense excluded (ties: the one nearest 90%)."""
    sparse = runs[(runs["method"] != "dense") & runs["target_sparsity"].notna()]
    if sparse.empty:
        return math.nan
    methods_per_sparsity = sparse.groupby(sparse["target_sparsity"].round(6))["method"].nunique()
    tied = methods_per_sparsity[methods_per_sparsity == methods_per_sparsity.max()].index
    return float(min(tied, key=lambda sparsity: (abs(sparsity - HEADLINE_SPARSITY), -sparsity)))


def _representative_runs(runs: pd.DataFrame) -> dict[str, tuple[pd.Series, pd.DataFrame]]:
    """One run per method at the focus sparsity (finished first, lowest seed), with its metrics."""
    focus = _focus_sparsity(runs)
    chosen = {}
    candidates = runs.assign(finished_rank=(runs["status"] != "finished").astype(int))
    for method, rows in candidates.groupby("method", sort=True):
        if method != "dense" and not math.isnan(focus):
            rows = rows[(rows["target_sparsity"] - focus).abs() < 1e-6]
        for _, run in rows.sort_values(["finished_rank", "seed"]).iterrows():
            try:
                metrics = load_metrics(run["run_dir"])
            except Exception as error:  # an unreadable metrics.csv only drops this run
                log.warning("metrics of %s unreadable (%s); skipped", run["run_dir"], error)
                continue
            if not metrics.empty:
                chosen[method] = (run, metrics)
                break
    return chosen


def plot_trajectories(runs: pd.DataFrame, out_dir: Path, suite: str) -> list[Path]:
    """Figure (c): sparsity and cumulative training FLOPs per epoch, one run per method."""
    chosen = _representative_runs(runs)
    if not chosen:
        log.warning("%s: no run has metrics.csv rows; trajectories skipped", suite)
        return []
    normalise = all(run.get("dense_training_flops", math.nan) > 0 for run, _ in chosen.values())
    figure, (sparsity_axes, flops_axes) = _new_figure(7.5, 7.0, nrows=2, sharex=True)
    for method, (run, metrics) in chosen.items():
        seed = "" if math.isnan(run["seed"]) else f", seed {int(run['seed'])}"
        label = f"{display_name('method', method)} ({run['target_sparsity']:.0%}{seed})"
        color = method_color(method)
        sparsity_axes.plot(metrics["epoch"], metrics["sparsity"] * 100, marker=".", color=color, label=label)
        flops = metrics["training_flops"] / run["dense_training_flops"] if normalise else metrics["training_flops"]
        flops_axes.plot(metrics["epoch"], flops, marker=".", color=color, label=label)
        if method == "acdc":
            compressed = metrics.loc[metrics["phase"] == "sparse", "epoch"]
            for epoch in compressed:
                for axes in (sparsity_axes, flops_axes):
                    axes.axvspan(epoch - 0.5, epoch + 0.5, color=color, alpha=0.07, linewidth=0)
    sparsity_axes.set_ylabel("sparsity at epoch end (%)")
    sparsity_axes.set_title(f"Sparsity and training cost per epoch ({suite})\n"
                            "shaded: AC/DC compressed (sparse) epochs")
    flops_axes.set_ylabel("cumulative training FLOPs\n(multiple of the dense run's total)"
                          if normalise else "cumulative training FLOPs")
    flops_axes.set_xlabel("epoch")
    for axes in (sparsity_axes, flops_axes):
        axes.grid(alpha=0.3)
    sparsity_axes.legend(fontsize="small")
    return _save(figure, out_dir, "trajectories")


def plot_mask_overlap(runs: pd.DataFrame, out_dir: Path, suite: str) -> list[Path]:
    """Figure (d): AC/DC mask IoU between consecutive compressed phases against epoch."""
    figure, axes = _new_figure()
    lines = 0
    acdc_runs = runs[runs["method"] == "acdc"].sort_values(["target_sparsity", "seed"])
    for _, run in acdc_runs.iterrows():
        try:
            metrics = load_metrics(run["run_dir"])
        except Exception as error:
            log.warning("metrics of %s unreadable (%s); skipped", run["run_dir"], error)
            continue
        overlap = metrics.dropna(subset=["mask_overlap"])
        if overlap.empty:
            continue
        seed = "" if math.isnan(run["seed"]) else f", seed {int(run['seed'])}"
        axes.plot(overlap["epoch"], overlap["mask_overlap"], marker="o",
                  label=f"target {run['target_sparsity']:.0%}{seed}")
        lines += 1
    if not lines:
        log.warning("%s: no AC/DC run logged a mask overlap; mask-overlap plot skipped", suite)
        return []
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("epoch (first epoch of the compressed phase)")
    axes.set_ylabel("mask IoU with the previous compressed phase")
    axes.set_title(f"AC/DC mask stability between compressed phases ({suite})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, out_dir, "acdc_mask_overlap")


def plot_all(runs: pd.DataFrame, reference: pd.DataFrame | None, out_dir: str | os.PathLike,
             suite: str) -> list[Path]:
    """Draw every figure of ``suite`` into ``out_dir``; return the PNG and SVG paths written."""
    out_dir = Path(out_dir)
    suite_runs = runs[runs["suite"] == suite] if "suite" in runs else runs.iloc[0:0]
    if suite_runs.empty:
        log.warning("suite %s has no runs; no plots", suite)
        return []
    table = compare_table(runs, reference, suite=suite)
    with_metrics = drop_superseded(suite_runs[~suite_runs["status"].isin(["corrupt", "failed"])])
    steps = []
    if table.empty:
        log.warning("suite %s has no finished runs; accuracy plots skipped", suite)
    else:
        steps += [("top-1 vs sparsity", lambda: plot_top1_vs_sparsity(table, reference, out_dir, suite)),
                  ("top-1 vs training FLOPs", lambda: plot_top1_vs_training_flops(table, reference, out_dir, suite)),
                  ("difference to AC/DC", lambda: plot_delta_vs_acdc(table, out_dir, suite))]
    steps += [("trajectories", lambda: plot_trajectories(with_metrics, out_dir, suite)),
              ("mask overlap", lambda: plot_mask_overlap(with_metrics, out_dir, suite))]
    written: list[Path] = []
    for name, draw in steps:
        try:
            written += draw()
        except Exception:  # a broken figure must not cost the others
            log.exception("suite %s: %s plot failed; skipped", suite, name)
    return written
