"""`acdc-bench verify`: a reproduction's runs held to the record shipped beside its leaderboard."""

import pandas as pd

from acdc_bench import numerics
from acdc_bench.cli import main
from acdc_bench.report.verify import read_record
from helpers import SHORT, needs_fashion


@needs_fashion
def test_verify_says_identical_for_a_rerun_and_names_what_differs(tmp_path, capsys, one_thread):
    common = ["--suite", "fashion-mnist", *[f"--set={item}" for item in SHORT], "--set=train_subset=512",
              "--set=budget.mode=paper"]
    boards = tmp_path / "boards"
    assert main(["reproduce", *common, "--methods", "dense", "acdc", "--sparsities", "0.9", "--seeds", "0", "1",
                 "--out", str(tmp_path / "runs"), "--leaderboard-dir", str(boards), "--jobs", "1",
                 "--no-progress"]) == 0
    path = boards / "fashion-mnist.runs.csv"
    record = read_record(path)
    assert sorted(record["seed"].astype(int)) == [0, 0, 1, 1] and set(record["numerics"]) == {numerics.default_mode()}
    assert record["metrics_sha256"].str.len().eq(64).all()
    capsys.readouterr()

    assert main(["verify", *common, "--record", str(path), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
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
