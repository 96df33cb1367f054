"""A run folder whose files are missing or disagree is a named, skipped run in every report, and the
leaderboard is written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from acdc_bench.cli import main
from acdc_bench.report.results import load_runs
from acdc_bench.run.folder import finished_problems, write_predictions

from run_folders import _config, _result, _write_run

SUITE = "fashion-mnist"  # a shipped suite, so that the command line reads these folders


def _finished(root: Path, method: str, seed: int, top1: float) -> Path:
    result = dict(_result(method, seed, top1), suite=SUITE, steps=100)
    return _write_run(root, f"{method}-seed{seed}", dict(_config(method, seed), suite=SUITE), result=result)


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    """Four finished runs of AC/DC and GMP; one lost its metrics.csv, one says a final top-1 above its
    best epoch's."""
    root = tmp_path / "runs"
    folders = {(method, seed): _finished(root, method, seed, top1)
               for (method, seed), top1 in {("acdc", 0): 88.0, ("acdc", 1): 89.0, ("gmp", 0): 86.0,
                                            ("gmp", 1): 86.5}.items()}
    (folders["gmp", 1] / "metrics.csv").unlink()
    path = folders["acdc", 1] / "result.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), top1=95.0)))  # top1_best stays 89.0
    return {"root": root, "no metrics": folders["gmp", 1], "edited": folders["acdc", 1]}


def test_load_runs_names_what_is_wrong(runs):
    table = load_runs(runs["root"]).set_index("run_dir")
    assert (table["status"] == "finished").sum() == 2
    broken = _finished(runs["root"], "gmp", 2, 86.0)
    (broken / "config.yaml").write_text("method: [gmp\n")  # a finished run whose protocol cannot be read
    row = load_runs(runs["root"]).set_index("run_dir").loc[str(broken)]
    assert row["status"] == "corrupt" and "the run's protocol cannot be read" in row["error"]
    short = _finished(runs["root"], "gmp", 3, 86.0)
    metrics = (short / "metrics.csv").read_text().splitlines()
    (short / "metrics.csv").write_text("\n".join(metrics[:-1]) + "\n")  # its last epoch's row lost
    row = load_runs(runs["root"]).set_index("run_dir").loc[str(short)]
    assert row["status"] == "corrupt" and "metrics.csv holds" in row["error"] and "cut short" in row["error"]
    missing, edited = table.loc[str(runs["no metrics"])], table.loc[str(runs["edited"])]
    assert missing["status"] == "corrupt" and "no metrics.csv" in missing["error"]
    assert edited["status"] == "corrupt" and "top1 95 lies above its top1_best 89" in edited["error"]


def test_a_run_folder_that_cannot_be_read_is_named_not_left_out(runs, monkeypatch):
    """A folder below --runs the user may not read (another user's, mode 700) is a skipped run with
    the reason, never a seed silently missing from the tables. (Root reads every folder, so the
    refusal is made by the directory listing here.)"""
    import os

    locked = runs["root"] / "someone-elses"
    locked.mkdir()
    listing = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    table = load_runs(runs["root"]).set_index("run_dir")
    assert len(table) == 5 and table.loc[str(locked), "status"] != "finished"
    assert table.loc[str(locked), "error"]  # named with its reasons, among the skipped


def test_compare_skips_and_names_them(runs, tmp_path, capsys):
    out = tmp_path / "compare"
    assert main(["compare", "--suite", SUITE, "--runs", str(runs["root"]), "--out", str(out)]) == 0
    error = capsys.readouterr().err
    assert f"skipped {runs['no metrics']}: corrupt: no metrics.csv" in error
    assert f"skipped {runs['edited']}: corrupt: result.json's top1 95 lies above" in error
    table = pd.read_csv(out / "compare.csv")
    assert table.set_index("method")["seeds"].to_dict() == {"acdc": 1, "gmp": 1}


def test_the_leaderboard_skips_them_and_writes_every_file(runs, tmp_path, capsys):
    out = tmp_path / "board"
    assert main(["leaderboard", "--suite", SUITE, "--runs", str(runs["root"]), "--out", str(out)]) == 0
    error = capsys.readouterr().err
    assert f"skipped {runs['no metrics']}" in error and f"skipped {runs['edited']}" in error
    record = pd.read_csv(out / f"{SUITE}.runs.csv")
    assert sorted(record["run_id"]) == ["acdc-s0.9-seed0", "gmp-s0.9-seed0"]
    assert {"compare.csv", "compare.md", f"{SUITE}.csv", f"{SUITE}.md"} <= {p.name for p in out.iterdir()}
    assert list((out / "plots" / SUITE).glob("*.svg"))


def test_a_leaderboard_made_again_removes_the_figures_it_no_longer_draws(runs, tmp_path, capsys):
    out = tmp_path / "board"
    plots = out / "plots" / SUITE
    assert main(["leaderboard", "--suite", SUITE, "--runs", str(runs["root"]), "--out", str(out)]) == 0
    old = plots / "delta_vs_acdc_old_name.svg"  # a figure only an earlier report drew
    old.write_text("<svg/>")
    (plots / "notes.txt").write_text("the user's own file")
    assert main(["leaderboard", "--suite", SUITE, "--runs", str(runs["root"]), "--out", str(out)]) == 0
    assert not old.exists() and (plots / "notes.txt").exists() and list(plots.glob("*.svg"))
    assert f"removed {old}" in capsys.readouterr().err


def test_a_leaderboard_that_fails_writes_nothing(runs, tmp_path, capsys, monkeypatch):
    from acdc_bench.report import verify

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "board" / f"{SUITE}.runs.csv"))

    monkeypatch.setattr(verify, "export_run_record", fail)
    out = tmp_path / "board"
    assert main(["leaderboard", "--suite", SUITE, "--runs", str(runs["root"]), "--out", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not out.exists()  # not the tables without the record and the plots
    assert not list(tmp_path.glob(".staging-*"))


def test_one_test_example_is_the_final_evaluations_slack(tmp_path):
    run_dir = _finished(tmp_path, "gmp", 0, 86.0)
    targets = [index % 10 for index in range(200)]  # 200 test examples: one is 0.5 points
    write_predictions(run_dir, targets=targets, final=targets)
    assert finished_problems(run_dir, dict(_result("gmp", 0, 86.0), top1=86.5, top1_best=86.0)) == []
    problems = finished_problems(run_dir, dict(_result("gmp", 0, 86.0), top1=86.75, top1_best=86.0))
    assert len(problems) == 1 and "top1 86.75 lies above its top1_best 86" in problems[0]
