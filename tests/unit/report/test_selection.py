"""Final and best epochs, said: every run records its best-epoch top-1 at its final sparsity, and a
published number is compared with our statistic of the same selection."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from acdc_bench.report.compare import match_published
from acdc_bench.report.results import load_reference
from acdc_bench.run.folder import best_epoch
from helpers import SHORT, needs_fashion


def test_the_best_epoch_is_taken_among_the_epochs_at_the_final_sparsity():
    rows = [{"epoch": 0, "top1": 80.0, "mask_sparsity": 0.0},    # AC/DC's dense warm-up: not the sparse model
            {"epoch": 1, "top1": 75.0, "mask_sparsity": 0.9},
            {"epoch": 2, "top1": 86.0, "mask_sparsity": 0.0},    # a dense phase, however good
            {"epoch": 3, "top1": 78.0, "mask_sparsity": 0.9},
            {"epoch": 4, "top1": 77.5, "mask_sparsity": 0.9}]
    assert best_epoch(rows, reached=0.9, tolerance=1e-3) == (78.0, 3)
    assert best_epoch(rows, reached=0.5, tolerance=1e-3) == (None, None)
    assert best_epoch([{"epoch": "0", "top1": "70.5", "mask_sparsity": "0.0"}], 0.0, 0.0) == (70.5, 0)


@needs_fashion
def test_a_run_records_its_final_and_best_epoch(tmp_path, one_thread):
    from acdc_bench.cli import main

    assert main(["run", "--suite", "fashion-mnist", "--method", "acdc", "--sparsity", "0.9", "--budget", "paper",
                 "--out", str(tmp_path), "--no-progress", *[f"--set={o}" for o in SHORT]]) == 0
    (run_dir,) = tmp_path.iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    metrics = pd.read_csv(run_dir / "metrics.csv")
    sparse = metrics[(metrics["mask_sparsity"] - 0.9).abs() <= 1e-3]
    assert result["top1_best"] == pytest.approx(sparse["top1"].max())
    assert metrics.loc[metrics["epoch"] == result["best_epoch"], "phase"].item() == "sparse"


def test_published_rows_say_their_selection_and_aggregators_are_never_matched():
    reference = load_reference()
    assert set(reference["selection"]) <= {"best", "final", "unknown"}
    assert "acdc-paper-recalled" not in set(reference["source_id"])  # rows nobody read are gone
    # the AC/DC and STR READMEs do not say which checkpoint they released (both codes keep several)
    assert (reference.loc[reference["source_id"].isin(["acdc-readme", "str-readme"]), "selection"] == "unknown").all()
    # a selection that was inferred says so, and from what
    final = reference[reference["selection"] == "final"]
    assert len(final) > 0 and final["inferred"].str.contains("selection").all()
    match = match_published(reference, dataset="imagenet", model="resnet50", method="acdc", target_sparsity=0.9,
                            distribution="global")
    assert match["source_id"] == "acdc-readme"
    only_aggregator = reference[reference["source_id"] == "acdc-readme"].assign(status="aggregator")
    assert match_published(only_aggregator, dataset="imagenet", model="resnet50", method="acdc",
                           target_sparsity=0.9) is None


def test_a_selection_that_is_not_known_is_an_error(tmp_path):
    text = (load_reference.__globals__["DEFAULT_REFERENCE_PATH"]).read_text().splitlines()
    header = text[0].split(",")
    index = header.index("selection")
    fields = text[1].split(",")
    fields[index] = "middle"
    (tmp_path / "bad.csv").write_text("\n".join([text[0], ",".join(fields)]) + "\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: selection 'middle' not in"):
        load_reference(tmp_path / "bad.csv")
    assert not math.isnan(load_reference()["top1"].iloc[0])
