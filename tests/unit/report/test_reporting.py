"""Tests of the reporting layer: run loading, comparison, leaderboard, plots, tracking."""

from __future__ import annotations

import json
import math
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from acdc_bench.report.compare import (
    compare_table, format_compare, format_compare_markdown, match_published, write_compare,
)
from acdc_bench.report.leaderboard import (
    LEADERBOARD_COLUMNS, build_leaderboard, export_leaderboard, format_leaderboard_markdown, read_leaderboard,
    validate_leaderboard,
)
from acdc_bench.report.plots import plot_all
from acdc_bench.report.results import REFERENCE_STATUSES, load_metrics, load_reference, load_runs
from acdc_bench.report.stats import mcnemar_exact
from acdc_bench.run import tracking
from acdc_bench.run.folder import write_predictions
from acdc_bench.run.tracking import Tracker

from run_folders import SUITE, TOP1, _config, _metrics, _result, _write_run, _write_seeds


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    """Four finished runs (2 methods x 2 seeds at 90%), one incomplete, one corrupt, one missing keys."""
    root = tmp_path / "runs"
    for (method, seed), top1 in TOP1.items():
        run_dir = _write_run(root / SUITE, f"{method}-seed{seed}", _config(method, seed),
                             result=_result(method, seed, top1), metrics=_metrics(method))
        # W&B leaves config.yaml files inside a run folder: they must not count as runs.
        (run_dir / "wandb" / "offline-run-x" / "files").mkdir(parents=True)
        (run_dir / "wandb" / "offline-run-x" / "files" / "config.yaml").write_text("a: 1\n")
    _write_run(root / SUITE, "rigl-seed0", _config("rigl", 0), metrics=_metrics("rigl").head(3), checkpoint=True)
    truncated_json = '{"schema_version": 1, "top1": '
    _write_run(root / SUITE / "nested" / "deeper", "str-seed0", _config("str", 0), result=truncated_json)
    missing = _result("rigl", 1, 80.0)
    del missing["top1"], missing["budget"]
    _write_run(root / SUITE, "rigl-seed1", _config("rigl", 1), result=missing)
    return root


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return load_reference()


def test_load_runs_statuses(run_root: Path):
    runs = load_runs(run_root, run_root / SUITE)  # overlapping roots: each folder once
    assert len(runs) == 7
    status = dict(zip(runs["run_dir"].map(lambda path: Path(path).name), runs["status"]))
    assert status == {"acdc-seed0": "finished", "acdc-seed1": "finished", "gmp-seed0": "finished",
                      "gmp-seed1": "finished", "rigl-seed0": "incomplete", "str-seed0": "corrupt",
                      "rigl-seed1": "corrupt"}
    by_name = runs.set_index(runs["run_dir"].map(lambda path: Path(path).name))
    assert by_name.at["rigl-seed0", "resumable"]
    assert by_name.at["rigl-seed0", "epochs_completed"] == 3
    assert by_name.at["rigl-seed0", "target_sparsity"] == 0.9  # from config.yaml
    assert "unreadable" in by_name.at["str-seed0", "error"]
    assert "top1" in by_name.at["rigl-seed1", "error"] and "budget" in by_name.at["rigl-seed1", "error"]
    assert by_name.at["acdc-seed0", "error"] == ""
    assert by_name.at["acdc-seed0", "budget_mode"] == "paper"
    assert by_name.at["acdc-seed0", "versions_torch"] == "2.x"
    assert by_name.at["acdc-seed0", "layer_densities"] == {"fc1.weight": 0.08, "fc2.weight": 0.15}


def test_load_runs_empty_and_missing_roots(tmp_path: Path):
    runs = load_runs(tmp_path, tmp_path / "does-not-exist")
    assert runs.empty and {"status", "error", "run_dir", "top1"} <= set(runs.columns)


def test_load_metrics(run_root: Path):
    metrics = load_metrics(run_root / SUITE / "acdc-seed0")
    assert list(metrics["phase"]) == ["dense", "dense", "sparse", "sparse", "dense", "sparse"]
    assert metrics["mask_overlap"].notna().sum() == 1
    assert load_metrics(run_root / SUITE / "str-seed0").empty  # no metrics.csv


def test_compare_table_numbers(run_root: Path, reference: pd.DataFrame):
    table = compare_table(load_runs(run_root), reference, suite=SUITE)
    assert list(table["method"]) == ["acdc", "gmp"]
    acdc, gmp = table.iloc[0], table.iloc[1]
    assert acdc["top1_mean"] == pytest.approx(88.5)
    assert acdc["top1_std"] == pytest.approx(statistics.stdev([88.0, 89.0]))  # 0.7071
    assert gmp["top1_mean"] == pytest.approx(86.25)
    assert gmp["top1_std"] == pytest.approx(statistics.stdev([86.0, 86.5]))  # 0.3536
    assert list(table["seeds"]) == [2, 2]
    assert acdc["delta_vs_acdc"] == pytest.approx(0.0)
    assert gmp["delta_vs_acdc"] == pytest.approx(86.25 - 88.5)
    assert acdc["actual_sparsity"] == pytest.approx(0.8999)
    assert acdc["training_flops_multiplier"] == pytest.approx(0.55)
    assert acdc["top1_dense_mean"] == pytest.approx(89.5)
    assert math.isnan(acdc["published_top1"])  # nothing published for Fashion-MNIST
    text = format_compare(table)
    assert "target sparsity 90.0%" in text and "88.50 ± 0.71" in text


def test_compare_single_seed_and_missing_acdc(tmp_path: Path, reference: pd.DataFrame):
    _write_run(tmp_path, "gmp", _config("gmp", 0, 0.8), result=_result("gmp", 0, 70.0, sparsity=0.8))
    table = compare_table(load_runs(tmp_path), reference)
    assert table.iloc[0]["seeds"] == 1
    assert math.isnan(table.iloc[0]["top1_std"]) and math.isnan(table.iloc[0]["delta_vs_acdc"])


def _cell(table: pd.DataFrame, method: str, sparsity: float = 0.9) -> pd.Series:
    rows = table[(table["method"] == method) & ((table["target_sparsity"] - sparsity).abs() < 1e-9)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_compare_three_seeds_intervals_and_verdicts(tmp_path: Path, reference: pd.DataFrame):
    """AC/DC against a clear loss (GMP), a clear win (RigL) and a tie (STR), three seeds each."""
    _write_seeds(tmp_path, "acdc", {0: 88.0, 1: 89.0, 2: 90.0})
    _write_seeds(tmp_path, "gmp", {0: 86.0, 1: 86.5, 2: 87.5})
    _write_seeds(tmp_path, "rigl", {0: 89.5, 1: 90.3, 2: 91.1})
    _write_seeds(tmp_path, "str", {0: 90.0, 1: 88.0, 2: 91.0})
    table = compare_table(load_runs(tmp_path), reference)
    acdc = _cell(table, "acdc")
    # mean 89, s 1: half-width t_{0.975,2} * 1 / sqrt(3) = 4.302653 * 0.577350 = 2.484138
    assert (acdc["top1_mean"], acdc["top1_std"]) == pytest.approx((89.0, 1.0))
    assert (acdc["top1_ci_low"], acdc["top1_ci_high"]) == pytest.approx((86.515862, 91.484138), abs=1e-5)
    assert acdc["ci_kind"] == "t over 3 seeds" and acdc["seeds"] == 3
    assert acdc["delta_vs_acdc"] == 0.0 and acdc["verdict_vs_acdc"] == "n/a"
    assert acdc["verdict_basis"] == "AC/DC itself"
    # GMP - AC/DC per seed: -2, -2.5, -2.5 -> mean -2.333333, s 0.288675, half-width 4.302653 * 0.166667 = 0.717109
    gmp = _cell(table, "gmp")
    assert (gmp["delta_vs_acdc"], gmp["delta_vs_acdc_ci_low"], gmp["delta_vs_acdc_ci_high"]) == pytest.approx(
        (-2.333333, -3.050442, -1.616225), abs=1e-5)
    assert gmp["verdict_vs_acdc"] == "worse" and gmp["paired_seeds"] == 3
    assert gmp["verdict_basis"] == "paired t over 3 seeds (0, 1, 2)"
    # RigL - AC/DC per seed: 1.5, 1.3, 1.1 -> mean 1.3, s 0.2, half-width 4.302653 * 0.115470 = 0.496828
    rigl = _cell(table, "rigl")
    assert (rigl["delta_vs_acdc"], rigl["delta_vs_acdc_ci_low"], rigl["delta_vs_acdc_ci_high"]) == pytest.approx(
        (1.3, 0.803172, 1.796828), abs=1e-5)
    assert rigl["verdict_vs_acdc"] == "better"
    # STR - AC/DC per seed: 2, -1, 1 -> mean 0.666667, s 1.527525, half-width 4.302653 * 0.881917 = 3.794583
    str_ = _cell(table, "str")
    assert (str_["delta_vs_acdc"], str_["delta_vs_acdc_ci_low"], str_["delta_vs_acdc_ci_high"]) == pytest.approx(
        (0.666667, -3.127917, 4.461250), abs=1e-5)
    assert str_["verdict_vs_acdc"] == "tie"
    text = format_compare(table)
    assert "[86.52, 91.48]" in text and "[-3.05, -1.62]" in text and "worse" in text and "better" in text
    markdown = format_compare_markdown(table)
    assert "| tie |" in markdown and "paired t over 3 seeds (0, 1, 2)" in markdown
    out = write_compare(table, tmp_path / "report")
    written = pd.read_csv(out[1])
    new_columns = ["top1_std", "top1_ci_low", "top1_ci_high", "delta_vs_acdc", "delta_vs_acdc_ci_low",
                   "delta_vs_acdc_ci_high", "verdict_vs_acdc", "published_inside_ci"]
    assert set(new_columns) <= set(written.columns)
    assert list(written.loc[written["method"] != "acdc", "verdict_vs_acdc"]) == ["worse", "better", "tie"]


def test_compare_pairs_only_the_common_seeds(tmp_path: Path, reference: pd.DataFrame):
    _write_seeds(tmp_path, "acdc", {0: 88.0, 1: 89.0})
    _write_seeds(tmp_path, "gmp", {0: 86.0, 1: 86.5, 2: 95.0})
    table = compare_table(load_runs(tmp_path), reference)
    gmp = _cell(table, "gmp")
    # the unpaired difference of means would be 89.166667 - 88.5 = +0.666667; paired over seeds 0 and 1:
    # -2, -2.5 -> mean -2.25, s 0.353553, half-width t_{0.975,1} * 0.25 = 12.706205 * 0.25 = 3.176551
    assert gmp["seeds"] == 3 and gmp["paired_seeds"] == 2
    assert (gmp["delta_vs_acdc"], gmp["delta_vs_acdc_ci_low"], gmp["delta_vs_acdc_ci_high"]) == pytest.approx(
        (-2.25, -5.426551, 0.926551), abs=1e-5)
    assert gmp["verdict_vs_acdc"] == "tie" and gmp["verdict_basis"] == "paired t over 2 seeds (0, 1)"
    assert gmp["ci_kind"] == "t over 3 seeds"


def _predictions(correct: range | list, total: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Targets (class i % 10) and predictions right exactly on the examples in ``correct``."""
    targets = np.arange(total) % 10
    final = (targets + 1) % 10
    final[list(correct)] = targets[list(correct)]
    return targets, final


def _write_with_predictions(root: Path, method: str, correct, seed: int = 0, sparsity: float = 0.9) -> Path:
    targets, final = _predictions(correct)
    top1 = 100 * float(np.mean(final == targets))
    run_dir = _write_run(root, f"{method}-s{sparsity}-seed{seed}", _config(method, seed, sparsity),
                         result=_result(method, seed, top1, sparsity=sparsity))
    write_predictions(run_dir, targets, final)
    return run_dir


def test_compare_one_seed_mcnemar_decides(tmp_path: Path, reference: pd.DataFrame):
    _write_with_predictions(tmp_path, "acdc", range(900))  # 900 of 1000 right
    _write_with_predictions(tmp_path, "gmp", [*range(870), *range(900, 905)])  # 875 right
    table = compare_table(load_runs(tmp_path), reference)
    acdc, gmp = _cell(table, "acdc"), _cell(table, "gmp")
    # Wilson, 900 of 1000: centre 0.898469, half-width 0.018621 -> [87.984804, 91.709056]
    assert (acdc["top1_ci_low"], acdc["top1_ci_high"]) == pytest.approx((87.984804, 91.709056), abs=1e-5)
    assert acdc["ci_kind"].startswith("test-set binomial (Wilson), 1 seed")
    assert math.isnan(acdc["top1_std"])
    # Discordant: only GMP right on 900-904 (5), only AC/DC right on 870-899 (30):
    # p = 2 * 384168 / 2^35 = 2.236e-5 < 0.05 -> worse; difference 87.5 - 90.0 = -2.5
    assert gmp["delta_vs_acdc"] == pytest.approx(-2.5)
    assert gmp["verdict_vs_acdc"] == "worse" and gmp["paired_seeds"] == 1
    assert gmp["verdict_basis"] == ("McNemar exact p=2.24e-05 on seed 0 (5 vs 30 discordant examples): "
                                    "test-set sampling only")
    expected = mcnemar_exact(*_predictions([*range(870), *range(900, 905)]), _predictions(range(900))[1])
    assert (gmp["delta_vs_acdc_ci_low"], gmp["delta_vs_acdc_ci_high"]) == pytest.approx(
        (expected.difference.low, expected.difference.high))
    assert gmp["delta_vs_acdc_ci_low"] < -2.5 < gmp["delta_vs_acdc_ci_high"] < 0


def test_compare_one_seed_mcnemar_tie(tmp_path: Path, reference: pd.DataFrame):
    _write_with_predictions(tmp_path, "acdc", range(900))
    _write_with_predictions(tmp_path, "rigl", [*range(897), *range(900, 906)])  # 903 right
    rigl = _cell(compare_table(load_runs(tmp_path), reference), "rigl")
    # Discordant: only RigL 6 (900-905), only AC/DC 3 (897-899): p = 2 * (1 + 9 + 36 + 84) / 2^9 = 0.507812
    assert rigl["delta_vs_acdc"] == pytest.approx(0.3)
    assert rigl["verdict_vs_acdc"] == "tie" and rigl["verdict_basis"].startswith("McNemar exact p=0.508")
    assert rigl["delta_vs_acdc_ci_low"] < 0 < rigl["delta_vs_acdc_ci_high"]


def test_compare_without_predictions_still_aggregates(tmp_path: Path, reference: pd.DataFrame):
    _write_with_predictions(tmp_path, "acdc", range(900))
    _write_run(tmp_path, "gmp", _config("gmp", 0), result=_result("gmp", 0, 86.0))  # an older run: no predictions.npz
    stale = _write_with_predictions(tmp_path, "rigl", range(880))
    result = json.loads((stale / "result.json").read_text())
    (stale / "result.json").write_text(json.dumps({**result, "top1": 80.0}))  # predictions of another model
    table = compare_table(load_runs(tmp_path), reference)
    gmp, rigl = _cell(table, "gmp"), _cell(table, "rigl")
    assert gmp["top1_mean"] == 86.0 and gmp["seeds"] == 1
    assert math.isnan(gmp["top1_ci_low"]) and gmp["ci_kind"] == "none: 1 seed, no predictions.npz"
    assert gmp["delta_vs_acdc"] == pytest.approx(-4.0) and math.isnan(gmp["delta_vs_acdc_ci_low"])
    assert gmp["verdict_vs_acdc"] == "n/a"
    assert gmp["verdict_basis"] == "1 seed in common (0), no predictions.npz for this method"
    assert rigl["verdict_vs_acdc"] == "n/a" and "disagrees with result.json" in rigl["verdict_basis"]
    assert "n/a: 1 seed in common (0), no predictions.npz" in format_compare(table)


def test_published_inside_or_outside_our_interval(tmp_path: Path, reference: pd.DataFrame):
    where = {"dataset": "imagenet", "model": "resnet50"}
    _write_seeds(tmp_path, "acdc", {0: 74.0, 1: 75.0, 2: 76.0}, 0.9, **where)  # [72.515862, 77.484138]
    _write_seeds(tmp_path, "acdc", {0: 70.0, 1: 70.5, 2: 71.0}, 0.8, **where)  # [69.257931, 71.742069]
    _write_seeds(tmp_path, "gmp", {0: 70.0}, 0.8, **where)  # one seed, no predictions: no interval
    table = compare_table(load_runs(tmp_path), reference)
    at_90, at_80, gmp = _cell(table, "acdc", 0.9), _cell(table, "acdc", 0.8), _cell(table, "gmp", 0.8)
    assert at_90["published_top1"] == pytest.approx(75.03) and at_90["published_inside_ci"] == True  # noqa: E712
    assert at_80["published_top1"] == pytest.approx(76.45) and at_80["published_inside_ci"] == False  # noqa: E712
    assert (at_80["top1_ci_low"], at_80["top1_ci_high"]) == pytest.approx((69.257931, 71.742069), abs=1e-5)
    assert pd.isna(gmp["published_inside_ci"])
    csv_text = write_compare(table, tmp_path / "report")[1].read_text()
    written = pd.read_csv(tmp_path / "report" / "compare.csv", keep_default_na=False, dtype=str)
    assert list(written["method"]) == ["acdc", "gmp", "acdc"] and "published_inside_ci" in csv_text
    assert list(written["published_inside_ci"]) == ["False", "", "True"]  # empty: no interval to test


def test_published_match_imagenet_resnet50_acdc(tmp_path: Path, reference: pd.DataFrame):
    for seed, top1 in ((0, 74.0), (1, 74.5)):
        result = dict(_result("acdc", seed, top1, dataset="imagenet", model="resnet50"), top1_best=top1 + 0.5,
                      best_epoch=90)
        _write_run(tmp_path, f"acdc-{seed}", _config("acdc", seed, dataset="imagenet", model="resnet50"),
                   result=result)
    table = compare_table(load_runs(tmp_path), reference)
    row = table.iloc[0]
    # the verified README checkpoint (global), cited with the file and commit it was read from
    assert row["published_top1"] == pytest.approx(75.03)
    assert row["published_source"] == "acdc-readme" and row["published_status"] == "verified"
    assert "IST-DASLab/ACDC README.md at ac53210b6adc" in row["published_citation"]
    # the README does not say which checkpoint it released: set beside our final epochs and our best ones
    assert row["published_distribution"] == "global" and row["published_selection"] == "unknown"
    assert row["top1_best_mean"] == pytest.approx(74.75) and row["best_epochs"] == "91 91"
    assert row["delta_basis"] == "final" and row["delta_vs_published"] == pytest.approx(74.25 - 75.03)
    assert row["delta_vs_published_best"] == pytest.approx(74.75 - 75.03)
    assert "d (best)" in format_compare(table) and "-0.28 (best)" in format_compare(table)
    # tested against the final epochs' interval: 74.25 +- t(1) 0.25 = [71.07, 77.43] holds 75.03
    assert row["published_inside_ci"] == True  # noqa: E712
    # a best-epoch number is set beside our best epochs only, and tested against their interval
    best = reference.assign(selection=reference["selection"].where(reference["source_id"] != "acdc-readme", "best"))
    row = compare_table(load_runs(tmp_path), best).iloc[0]
    assert row["delta_basis"] == "best" and row["delta_vs_published"] == pytest.approx(74.75 - 75.03)
    assert pd.isna(row["delta_vs_published_best"])
    # 74.75 +- t(1) 0.25 = [71.57, 77.93] holds 75.03
    assert row["published_inside_ci"] == True  # noqa: E712

    out = write_compare(table, tmp_path / "report")
    assert {path.name for path in out} == {"compare.md", "compare.csv"}
    assert "acdc-readme" in (tmp_path / "report" / "compare.md").read_text()
    assert len(pd.read_csv(tmp_path / "report" / "compare.csv")) == 1


def test_match_published_prefers_variant_then_status(reference: pd.DataFrame):
    rigl = match_published(reference, dataset="imagenet", model="resnet50", method="rigl", target_sparsity=0.9,
                           variant="", distribution="erk")
    assert (rigl["variant"], rigl["distribution"], rigl["top1"]) == ("1x", "ERK", 73.07)
    rigl_5x = match_published(reference, dataset="imagenet", model="resnet50", method="rigl",
                              target_sparsity=0.9, variant="5x", distribution="uniform")
    assert rigl_5x["top1"] == pytest.approx(75.73)
    assert match_published(reference, dataset="imagenet", model="resnet50", method="acdc",
                           target_sparsity=0.42) is None


def test_reference_csv_rows_have_source_and_status(reference: pd.DataFrame):
    assert len(reference) > 0
    assert (reference["source"].str.strip() != "").all()
    assert reference["status"].isin(REFERENCE_STATUSES).all()
    assert reference["top1"].between(0, 100).all()
    known = reference["target_sparsity"].dropna()
    assert ((known >= 0) & (known < 1)).all()


def test_leaderboard_builds_validates_and_exports(tmp_path: Path, reference: pd.DataFrame):
    for method, top1 in (("acdc", 74.0), ("gmp", 73.0)):
        _write_run(tmp_path / "runs", method, _config(method, 0, dataset="imagenet", model="resnet50"),
                   result=_result(method, 0, top1, dataset="imagenet", model="resnet50"))
    board = build_leaderboard(load_runs(tmp_path / "runs"), reference, SUITE)
    assert list(board.columns) == LEADERBOARD_COLUMNS
    validate_leaderboard(board)
    ours = board[board["source"] == "acdc_bench"]
    assert set(ours["method"]) == {"AC/DC", "GMP"} and (ours["seeds"] == 1).all()
    assert ours[["value_std", "value_ci_low", "value_ci_high"]].isna().all().all()  # one seed, no predictions
    published = board[board["source"] != "acdc_bench"]
    assert len(published) > 0 and set(published["dataset"]) == {"ImageNet"}
    assert not published["source"].str.contains("acdc_bench").any()
    paths = export_leaderboard(board, tmp_path / "leaderboards" / "imagenet.csv")
    assert [path.suffix for path in paths] == [".csv", ".md"] and all(path.stat().st_size for path in paths)
    assert len(read_leaderboard(paths[0])) == len(board)


def test_leaderboard_carries_intervals(tmp_path: Path, reference: pd.DataFrame):
    where = {"dataset": "imagenet", "model": "resnet50"}
    _write_seeds(tmp_path / "runs", "acdc", {0: 74.0, 1: 75.0, 2: 76.0}, **where)
    board = build_leaderboard(load_runs(tmp_path / "runs"), reference, SUITE)
    ours = board[board["source"] == "acdc_bench"].iloc[0]
    # mean 75, s 1, 95% t over 3 seeds: 75 ± 2.484138
    assert (ours["value"], ours["value_std"]) == pytest.approx((75.0, 1.0))
    assert (ours["value_ci_low"], ours["value_ci_high"]) == pytest.approx((72.515862, 77.484138), abs=1e-5)
    assert ours["seeds"] == 3
    set_rows = board[(board["method"] == "SET") & (board["sparsity"] == 0.9)]
    assert set_rows["value_std"].tolist() == [0.23]  # the published std; no interval for published rows
    assert set_rows["value_ci_low"].isna().all()
    assert set_rows["source"].str.contains("luuyin/chase README.md at 6190eb8fcb79").all()
    assert "| 75.00 ± 2.48 | 1.00 |" in format_leaderboard_markdown(board)
    paths = export_leaderboard(board, tmp_path / "board.csv")
    again = read_leaderboard(paths[0])
    assert again["value_ci_high"].tolist() == pytest.approx(board["value_ci_high"].tolist(), nan_ok=True)
    # A CSV exported before the interval columns existed still reads, with them empty.
    old = pd.read_csv(paths[0]).drop(columns=["value_std", "value_ci_low", "value_ci_high"])
    old.to_csv(tmp_path / "old.csv", index=False)
    assert read_leaderboard(tmp_path / "old.csv")[["value_std", "value_ci_low", "value_ci_high"]].isna().all().all()


def test_leaderboard_validation_names_the_problem(tmp_path: Path, reference: pd.DataFrame):
    _write_run(tmp_path, "acdc", _config("acdc", 0), result=_result("acdc", 0, 88.0))
    board = build_leaderboard(load_runs(tmp_path), reference, SUITE)
    broken = board.copy()
    broken.loc[0, "value"] = 150.0
    with pytest.raises(ValueError, match=r"row 0 .*'value' is 150.0, outside \[0, 100\]"):
        validate_leaderboard(broken)
    broken = board.copy()
    broken.loc[0, "source"] = ""
    with pytest.raises(ValueError, match=r"row 0 .*'source' is empty"):
        validate_leaderboard(broken)
    with pytest.raises(ValueError, match=r"missing \['source'\]"):
        validate_leaderboard(board.drop(columns=["source"]))
    broken = board.copy()
    broken.loc[0, ["value_ci_low", "value_ci_high"]] = [89.0, 90.0]  # value 88.0 lies below it
    with pytest.raises(ValueError, match=r"row 0 .*'value_ci_low' is 89.0, above value"):
        validate_leaderboard(broken)
    broken.loc[0, "value_ci_high"] = math.nan
    with pytest.raises(ValueError, match=r"row 0 .*'value_ci_high' is nan, empty while the other end is given"):
        validate_leaderboard(broken)
    broken = board.copy()
    broken.loc[0, "value_std"] = -1.0
    with pytest.raises(ValueError, match=r"row 0 .*'value_std' is -1.0, negative"):
        validate_leaderboard(broken)
    broken = board.copy()
    broken.loc[0, "sparsity"] = 1.0
    with pytest.raises(ValueError, match="sparsity"):
        export_leaderboard(broken, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_plots_write_png_and_svg(run_root: Path, tmp_path: Path, reference: pd.DataFrame):
    paths = plot_all(load_runs(run_root), reference, tmp_path / "plots", SUITE)
    stems = {path.stem for path in paths}
    pair = "fashion-mnist_lenet-300-100"
    assert stems == {f"top1_vs_sparsity_{pair}", f"top1_vs_training_flops_{pair}", "delta_vs_acdc", "trajectories",
                     "acdc_mask_overlap"}
    assert {path.suffix for path in paths} == {".png", ".svg"}
    assert all(path.exists() and path.stat().st_size > 0 for path in paths)
    # A second export of the same runs writes byte-identical SVGs (no random element ids, no date).
    svgs = {path.name: path.read_bytes() for path in paths if path.suffix == ".svg"}
    again = plot_all(load_runs(run_root), reference, tmp_path / "again", SUITE)
    assert {path.name: path.read_bytes() for path in again if path.suffix == ".svg"} == svgs


def test_plots_with_published_points_and_nothing_to_plot(tmp_path: Path, reference: pd.DataFrame):
    _write_run(tmp_path / "runs", "acdc", _config("acdc", 0, dataset="imagenet", model="resnet50"),
               result=_result("acdc", 0, 74.0, dataset="imagenet", model="resnet50"))
    paths = plot_all(load_runs(tmp_path / "runs"), reference, tmp_path / "plots", SUITE)
    assert any(path.name == "top1_vs_sparsity_imagenet_resnet50.svg" for path in paths)
    assert plot_all(load_runs(tmp_path / "empty"), reference, tmp_path / "none", SUITE) == []


STYLED_PLUGIN = """
from acdc_bench.methods import MaskedMethod, register_method

@register_method("styled-static")
class Styled(MaskedMethod):
    display_name, color, marker = "Styled Static", "tab:olive", "X"

@register_method("plain-static")
class Plain(MaskedMethod):
    pass
"""


def test_a_method_class_names_and_styles_itself_in_every_report(tmp_path: Path, monkeypatch):
    from acdc_bench.cli import _import_plugins_of
    from acdc_bench.methods import find_method
    from acdc_bench.report.compare import display_name
    from acdc_bench.report.plots import FALLBACK_COLORS, method_color, published_marker

    (tmp_path / "styled_plugin.py").write_text(STYLED_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_method("styled-static") is None
    # compare and leaderboard import the plugins the runs were made with; one that is gone is a note
    runs = pd.DataFrame({"plugins": [["styled_plugin"], [], ["gone_plugin"]]})
    notes = _import_plugins_of(runs)
    assert len(notes) == 1 and "gone_plugin" in notes[0] and "shown by their ids" in notes[0]
    assert display_name("method", "styled-static") == "Styled Static"
    assert method_color("styled-static") == method_color("Styled Static") == "tab:olive"
    assert published_marker("styled-static") == "X"
    # undeclared: the id, and a style picked from it, the same each time
    assert display_name("method", "plain-static") == "plain-static"
    assert method_color("plain-static") in FALLBACK_COLORS
    assert method_color("plain-static") == method_color("plain-static")
    # built-in methods declare theirs, matched from a published name too
    assert display_name("method", "acdc") == "AC/DC" and method_color("AC/DC") == method_color("acdc")
    assert display_name("method", "Top-KAST") == "Top-KAST"


def test_tracker_disabled_does_nothing(tmp_path: Path):
    tracker = Tracker(enabled=False)
    tracker.start(tmp_path / "run", {"method": "acdc"}, name="run")
    tracker.log_epoch({"epoch": 0, "top1": 50.0})
    tracker.log_result({"top1": 50.0})
    tracker.finish()
    assert not tracker.active and not (tmp_path / "run").exists()
    ranked = Tracker(enabled=True, rank=1)
    ranked.start(tmp_path / "rank1", {}, name="rank1")
    assert not ranked.active and not (tmp_path / "rank1").exists()


def test_tracker_offline_writes_under_run_dir(tmp_path: Path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "result.json").write_text(json.dumps({"top1": 70.0}))
    with Tracker(enabled=True) as tracker:
        tracker.start(run_dir, {"method": "acdc", "sparsity": 0.9}, name="acdc-test")
        assert tracker.active
        tracker.log_epoch({"epoch": 0, "phase": "dense", "top1": 50.0, "mask_overlap": float("nan")})
        tracker.log_result({"top1": 70.0, "budget": {"mode": "paper"}}, files=[run_dir / "result.json"])
    assert not tracker.active
    wandb_files = [path for path in (run_dir / "wandb").rglob("*") if path.is_file()]
    assert wandb_files, "expected W&B offline files under run_dir/wandb"
    assert any(path.suffix == ".wandb" for path in wandb_files)


def test_tracker_defaults_to_offline_when_wandb_mode_unset(tmp_path: Path, monkeypatch, caplog):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    with caplog.at_level("INFO", logger="acdc_bench.run.tracking"), Tracker(enabled=True) as tracker:
        tracker.start(tmp_path / "run", {"method": "acdc"}, name="unset-mode")
        assert tracker.active
    assert "WANDB_MODE is unset" in caplog.text
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_tracker_without_wandb_warns_once_and_continues(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    monkeypatch.setattr(tracking, "_warned_missing_wandb", False)
    with pytest.warns(RuntimeWarning, match="wandb cannot be imported"):
        Tracker(enabled=True).start(tmp_path / "a", {}, name="a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second tracker must not warn again
        second = Tracker(enabled=True)
        second.start(tmp_path / "b", {}, name="b")
        second.log_epoch({"epoch": 0, "top1": 1.0})
        second.finish()
    assert not second.active


def test_the_leaderboard_docstring_describes_every_column_of_the_schema_in_order():
    """The schema is declared once (LEADERBOARD_SCHEMA); the module docstring's table, which a user
    reads, lists the same columns with the same dtypes in the same order."""
    from acdc_bench.report import leaderboard

    table = leaderboard.__doc__.split("Columns, in this order", 1)[1].split("=\n\n", 1)[0]
    rows = [line.split()[:2] for line in table.splitlines()
            if line and not line.startswith((" ", "=")) and line.split()[0] != "column"]
    assert rows == [[column, dtype] for column, dtype in leaderboard.LEADERBOARD_SCHEMA.items()]


def test_a_reference_table_that_is_no_csv_is_named(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "binary.csv").write_bytes(b"\x80\x02\x8a\n\xfe" * 20)
    for name in ("empty.csv", "binary.csv"):
        with pytest.raises(ValueError, match=rf"{tmp_path / name}: not a CSV reference table \("):
            load_reference(tmp_path / name)
