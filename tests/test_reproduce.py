"""`reproduce`: a whole (tiny) suite end to end, killed midway and finished on the second try."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from acdc_bench.report.leaderboard import read_leaderboard

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FASHION.exists() and not os.environ.get("ACDC_BENCH_DATA"),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
TINY = ["--set=train_subset=2000", "--set=epochs=4", "--set=methods.acdc.schedule_epochs=4",
        "--set=methods.acdc.warmup_epochs=1", "--set=methods.acdc.phase_epochs=1",
        "--set=methods.acdc.final_dense_epochs=1", "--set=methods.acdc.final_sparse_epochs=1"]


def command(out, leaderboards, methods=("dense", "acdc")):
    return [sys.executable, "-m", "acdc_bench", "reproduce", "--suite", "fashion-mnist", "--methods", *methods,
            "--sparsities", "0.9", "0.95", "--seeds", "0", "--out", str(out), "--leaderboard-dir",
            str(leaderboards), "--no-progress", *TINY]


def finished(out):
    """Finished run ids and the modification time of their result.json."""
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/result.json")}


def test_kill_midway_then_rerun_keeps_finished_runs_and_completes(tmp_path):
    out, leaderboards = tmp_path / "runs", tmp_path / "lb"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    process = subprocess.Popen(command(out, leaderboards), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(list(out.glob("*/result.json"))) < 1:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = finished(out)
    assert 1 <= len(before) < 3, "the kill should land midway"

    rerun = subprocess.run(command(out, leaderboards), env=env, capture_output=True, text=True, check=True)
    after = finished(out)
    assert len(after) == 3  # dense once + AC/DC at 90% and 95%
    assert all(after[name] == stamp for name, stamp in before.items()), "a finished run was retrained"
    assert "finished already" in rerun.stdout
    assert "[3/3]" in rerun.stdout

    third = subprocess.run(command(out, leaderboards), env=env, capture_output=True, text=True, check=True)
    assert third.stdout.count("finished already") == 3
    table = pd.read_csv(out / "compare.csv")
    assert set(table["method"]) == {"dense", "acdc"}
    board = read_leaderboard(leaderboards / "fashion-mnist.csv")
    assert (board["source"] == "acdc_bench").sum() == 3
    assert list(leaderboards.glob("plots/fashion-mnist/*.png"))
