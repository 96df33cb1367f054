"""`compare` keeps matched runs of two suite lengths apart: the suite's length sets AC/DC's budget,
so GMP matched under `--set epochs=3` and under `--set epochs=4` are two rows, each seed once."""

import pandas as pd

from acdc_bench.cli import main
from helpers import needs_fashion


@needs_fashion
def test_compare_gives_matched_runs_of_two_suite_lengths_two_rows(tmp_path, capsys, one_thread):
    runs = tmp_path / "runs"
    for epochs, seed in ((3, 0), (3, 1), (4, 0)):
        assert main(["run", "--out", str(runs), "--no-progress", "--method", "gmp", "--sparsity", "0.9",
                     "--seed", str(seed), "--set=train_subset=512", f"--set=epochs={epochs}"]) == 0
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["compare", "--runs", str(runs), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "run twice" not in printed.err and "supersedes" not in printed.err
    gmp = pd.read_csv(out / "compare.csv").query("method == 'gmp'")
    rows = {text: seeds for text, seeds in zip(gmp["differs"], gmp["seeds"])}
    assert rows == {"suite_epochs=3": 2, "suite_epochs=4": 1}, gmp[["cell", "differs", "seeds", "run_ids"]]
