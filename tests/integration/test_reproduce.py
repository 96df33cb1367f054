"""`reproduce`: a whole (tiny) suite end to end, killed midway and finished on the second try."""

import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd

from acdc_bench.report.leaderboard import read_leaderboard

from helpers import needs_fashion

pytestmark = needs_fashion
TINY = ["--set=train_subset=2000", "--set=epochs=4", "--set=methods.acdc.schedule_epochs=4",
        "--set=methods.acdc.warmup_epochs=1", "--set=methods.acdc.phase_epochs=1",
        "--set=methods.acdc.final_dense_epochs=1", "--set=methods.acdc.final_sparse_epochs=1"]


def command(out, leaderboards, methods=("dense", "acdc"), sparsities=("0.9", "0.95")):
    return [sys.executable, "-m", "acdc_bench", "reproduce", "--suite", "fashion-mnist", "--methods", *methods,
            "--sparsities", *sparsities, "--seeds", "0", "--out", str(out), "--leaderboard-dir",
            str(leaderboards), "--no-progress", "--dense-step-seconds=1", *TINY]  # the FLOP-ideal rate: 1 s of timing


def finished(out):
    """Finished run ids and the modification time of their result.json."""
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/result.json")}


def test_kill_midway_then_rerun_keeps_finished_runs_and_completes(tmp_path):
    out, leaderboards = tmp_path / "runs", tmp_path / "lb"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    # one job: the runs train in the command's own process, one after the other (side by side: below)
    process = subprocess.Popen(command(out, leaderboards) + ["--jobs", "1"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(list(out.glob("*/result.json"))) < 1:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = finished(out)
    assert 1 <= len(before) < 3, "the kill should land midway"

    rerun = subprocess.run(command(out, leaderboards) + ["--jobs", "1"], env=env, capture_output=True, text=True,
                           check=True)
    after = finished(out)
    assert len(after) == 3  # dense once + AC/DC at 90% and 95%
    assert all(after[name] == stamp for name, stamp in before.items()), "a finished run was retrained"
    assert "finished already" in rerun.stdout
    assert "[3/3]" in rerun.stdout
    assert f"this invocation trained {3 - len(before)} run(s) in " in rerun.stdout
    # the dense step it timed is kept for the next invocation (its reuse: tests/unit/report/test_timing.py)
    assert (out / "dense-step.json").exists()
    table = pd.read_csv(out / "compare.csv")
    assert set(table["method"]) == {"dense", "acdc"}
    board = read_leaderboard(leaderboards / "fashion-mnist.csv")
    assert (board["source"] == "acdc_bench").sum() == 3
    assert list(leaderboards.glob("plots/fashion-mnist/*.png"))


def test_jobs_run_side_by_side_and_compute_what_each_run_computes_alone(tmp_path):
    """--jobs 2 (1 thread each): a run's metrics equal the same run alone with 1 thread."""
    import shutil

    out, leaderboards = tmp_path / "runs", tmp_path / "lb"
    env = dict(os.environ, WANDB_MODE="disabled")
    parallel = subprocess.run(command(out, leaderboards, methods=("dense", "acdc", "gmp"), sparsities=("0.95",))
                              + ["--jobs", "2", "--status-every", "1"], env=env, capture_output=True, text=True,
                              timeout=600)
    assert parallel.returncode == 0, parallel.stdout + parallel.stderr
    assert "2 side by side, 1 thread(s) each" in parallel.stdout
    assert "time per method: wall time vs the FLOP-ideal time" in parallel.stdout
    assert re.search(r"this invocation trained 3 run\(s\) in \d+m\d\ds elapsed, in 2 jobs side by side",
                     parallel.stdout)
    runs = {p.parent.name.split("-")[0] + p.parent.name.split("-")[1]: p.parent for p in out.glob("*/result.json")}
    assert sorted(runs) == ["acdcs0.95", "dense" + "s0", "gmps0.95"]
    # GMP 0.95 alone, 1 thread, matched to the same measured AC/DC run (copied): the same run id
    alone = tmp_path / "alone"
    shutil.copytree(runs["acdcs0.95"], alone / runs["acdcs0.95"].name)
    single = subprocess.run([sys.executable, "-m", "acdc_bench", "run", "--suite", "fashion-mnist", "--method", "gmp",
                             "--sparsity", "0.95", "--out", str(alone), "--no-progress", *TINY],
                            env=dict(env, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE"), capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    assert (alone / runs["gmps0.95"].name / "result.json").exists()
    mine = pd.read_csv(alone / runs["gmps0.95"].name / "metrics.csv").drop(columns=["wall_time_s"])
    theirs = pd.read_csv(runs["gmps0.95"] / "metrics.csv").drop(columns=["wall_time_s"])
    pd.testing.assert_frame_equal(mine, theirs)


def test_status_line_names_started_runs_and_a_chain_cells_current_run(tmp_path):
    """Futures in the pool's call queue report running(): only runs whose folder holds a config are
    running; a calibration chain's progress is its newest run's (other id, other length)."""
    from acdc_bench.run.launch import _cell_progress, _started

    from types import SimpleNamespace

    def run(method, sparsity, run_id, epochs):  # what the status line reads of a RunConfig
        return SimpleNamespace(method=method, sparsity=sparsity, seed=1, run_id=run_id, epochs=epochs,
                               budget=SimpleNamespace(mode="matched"))

    plain = run("acdc", 0.9, "acdc-s0.9-seed1-e10-abc", 10)
    chain = run("str", 0.95, "str-s0.95-seed1-st7074-def", 31)
    assert not _started(tmp_path, plain) and not _started(tmp_path, chain)
    run = tmp_path / plain.run_id
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 10\n")
    (run / "metrics.csv").write_text("epoch\n0\n1\n2\n")
    assert _started(tmp_path, plain) and _cell_progress(tmp_path, plain) == "epoch 3/10"
    first = tmp_path / chain.run_id
    first.mkdir()
    (first / "config.yaml").write_text("epochs: 31\n")
    (first / "metrics.csv").write_text("epoch\n" + "\n".join(map(str, range(31))) + "\n")
    time.sleep(0.05)
    second = tmp_path / "str-s0.95-seed1-st7400-0a1"
    second.mkdir()
    (second / "config.yaml").write_text("epochs: 32\n")
    (second / "metrics.csv").write_text("epoch\n0\n")
    assert _started(tmp_path, chain)
    assert _cell_progress(tmp_path, chain) == "run 2 epoch 1/32"
