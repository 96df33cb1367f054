"""`acdc-bench verify`: a reproduction's runs held to the record shipped with the package (a copy of
the one beside its leaderboard), or to a record of the user's own (``--record``)."""

import subprocess

import pandas as pd
import pytest

import acdc_bench
from acdc_bench import numerics
from acdc_bench.cli import main
from acdc_bench.report.verify import read_record, shipped_record, shipped_records
from helpers import ROOT, SHORT, needs_fashion


@needs_fashion
def test_verify_says_identical_for_a_rerun_and_names_what_differs(tmp_path, capsys, one_thread):
    common = ["--suite", "fashion-mnist", *[f"--set={item}" for item in SHORT], "--set=train_subset=512",
              "--set=budget.mode=paper"]
    boards = tmp_path / "boards"
    assert main(["reproduce", *common, "--methods", "dense", "acdc", "--sparsities", "0.9", "--seeds", "0", "1",
                 "--out", str(tmp_path / "runs"), "--leaderboard-dir", str(boards), "--jobs", "1",
                 "--no-progress", "--dense-step-seconds=1"]) == 0
    path = boards / "fashion-mnist.runs.csv"
    record = read_record(path)
    assert sorted(record["seed"].astype(int)) == [0, 0, 1, 1] and set(record["numerics"]) == {numerics.default_mode()}
    assert record["metrics_sha256"].str.len().eq(64).all()
    capsys.readouterr()

    assert main(["verify", *common, "--record", str(path), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert f"record {path} (given with --record)" in out
    assert "2 identical" in out and "different" not in out and f"{numerics.default_mode()} numerics" in out

    acdc = record.index[(record["method"] == "acdc") & (record["seed"] == "0")][0]
    record.loc[acdc, "top1"] = "12.5"
    record.to_csv(path, index=False)
    assert main(["verify", *common, "--record", str(path), "--jobs", "1"]) == 1
    out = capsys.readouterr().out
    assert f"different {record.loc[acdc, 'run_id']}" in out and "top1 12.5 ->" in out and "1 identical" in out


def test_verify_without_a_record_is_a_clear_error(tmp_path, capsys):
    assert main(["verify", "--record", str(tmp_path / "none.runs.csv")]) == 2
    assert "no run record to verify against" in capsys.readouterr().err
    pd.DataFrame({"run_id": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    assert main(["verify", "--record", str(tmp_path / "bad.csv")]) == 2
    assert "not a run record" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text("")
    assert main(["verify", "--record", str(tmp_path / "empty.csv")]) == 2
    assert f"{tmp_path / 'empty.csv'}: not a CSV run record" in capsys.readouterr().err
    record = read_record(shipped_record("fashion-mnist-10")).head(2)
    record.loc[1, "seed"] = "1.0"  # a value the record cannot mean: said with its file and line
    record.to_csv(tmp_path / "seed.csv", index=False)
    assert main(["verify", "--record", str(tmp_path / "seed.csv")]) == 2
    assert f"{tmp_path / 'seed.csv'}:3: seed '1.0' is not a whole number" in capsys.readouterr().err


def _no_training(monkeypatch) -> list:
    """``run_all`` replaced: the waves verify would train are kept, nothing trains."""
    planned = []
    monkeypatch.setattr("acdc_bench.run.launch.run_all",
                        lambda suite, waves, out, args: planned.extend(spec for wave in waves for spec in wave) or 0)
    return planned


def test_verify_holds_to_the_shipped_record_and_refuses_overrides_it_does_not_hold(tmp_path, monkeypatch, capsys):
    # a user's reproduction has rewritten leaderboards/ in the working folder: verify does not read it
    monkeypatch.chdir(tmp_path)
    (tmp_path / "leaderboards").mkdir()
    mine = read_record(shipped_record("fashion-mnist-10"))
    mine["top1"] = "10.0"
    mine.to_csv(tmp_path / "leaderboards" / "fashion-mnist-10.runs.csv", index=False)
    planned = _no_training(monkeypatch)

    assert main(["verify", "--set", "epochs=3"]) == 2
    printed = capsys.readouterr()
    shipped = shipped_record("fashion-mnist-10")
    assert f"record {shipped} (shipped with acdc-bench {acdc_bench.__version__})" in printed.out
    error = printed.err.strip()
    assert "\n" not in error and "would not be re-made under these options" in error
    assert "given: --set epochs=3" in error and "--record" in error
    assert planned == []  # refused before any training


@pytest.mark.parametrize("suite", sorted(shipped_records()))
def test_verify_plans_exactly_the_recorded_runs_of_each_shipped_record(suite, monkeypatch, capsys):
    planned = _no_training(monkeypatch)
    assert main(["verify", "--suite", suite, "--all", "--jobs", "1"]) == 1  # nothing trained: every run missing
    record = read_record(shipped_record(suite))
    assert sorted((spec.method, round(spec.sparsity, 6), spec.seed) for spec in planned) == sorted(
        (method, round(float(sparsity), 6), int(seed))
        for method, sparsity, seed in zip(record["method"], record["target_sparsity"], record["seed"]))
    assert f"{len(record)} missing" in capsys.readouterr().out


def test_verify_keep_holds_only_the_recorded_runs_of_its_folder(tmp_path, monkeypatch, capsys):
    """``--keep DIR`` holding other runs (a reproduction's seeds 1 and 2): they are left out and said,
    never counted as extra; nothing is trained here, so every recorded run of seed 0 is missing."""
    from run_folders import _config, _result, _write_run

    keep = tmp_path / "keep"
    _write_run(keep, "gmp-seed1", _config("gmp", 1), result=_result("gmp", 1, 88.0))
    _no_training(monkeypatch)
    assert main(["verify", "--keep", str(keep), "--jobs", "1"]) == 1
    out = capsys.readouterr().out
    record = read_record(shipped_record("fashion-mnist-10"))
    assert f"1 other run folder(s) in {keep} left out" in out
    assert f"{(record['seed'] == '0').sum()} missing" in out and "extra" not in out


def _committed(path) -> bytes:
    """``path`` as the checkout's last commit holds it (a user's own reproduction rewrites the file
    in the work tree; the shipped record is the committed one), or as it is outside a git checkout."""
    relative = path.relative_to(ROOT).as_posix()
    shown = subprocess.run(["git", "-C", str(ROOT), "show", f"HEAD:{relative}"], capture_output=True)
    return shown.stdout if shown.returncode == 0 else path.read_bytes()


def test_the_packaged_records_are_the_shipped_leaderboard_records():
    leaderboards = {path.name[:-len(".runs.csv")]: path for path in (ROOT / "leaderboards").glob("*.runs.csv")}
    assert sorted(shipped_records()) == sorted(leaderboards), \
        "acdc_bench/records/ must hold a copy of each leaderboards/<suite>.runs.csv"
    for suite, path in leaderboards.items():
        assert _committed(path) == shipped_record(suite).read_bytes(), \
            f"{shipped_record(suite)} differs from {path}: copy the re-made record into acdc_bench/records/"
