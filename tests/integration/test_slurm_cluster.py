"""``reproduce --launcher slurm`` against a real single-node Slurm (tests/slurm_cluster.py): a CPU
partition, an sbatch refusal, a job Slurm can never start, and a job requeued mid-run whose run ends
equal to the same run trained without a scheduler.

These need Debian's slurmctld, slurmd, slurm-client and munge, and root (the daemons run as root on
ports of their own), and take about two and a half minutes: ``nox -s slurm`` installs the packages and runs them
with ACDC_BENCH_SLURM=require, which turns any skip into a failure. ``nox -s tests`` skips them.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time

import pytest

from acdc_bench.cli import main
from helpers import SHORT, needs_fashion
from slurm_cluster import Cluster, missing

REQUIRED = os.environ.get("ACDC_BENCH_SLURM") == "require"
_why = ("run by nox -s slurm (ACDC_BENCH_SLURM=require)" if not REQUIRED
        else f"Slurm programs missing: {', '.join(missing())} (nox -s slurm installs them)" if missing()
        else "the test cluster's daemons run as root" if os.geteuid() != 0 else "")
if REQUIRED and _why:
    raise RuntimeError(f"ACDC_BENCH_SLURM=require but {_why}")
pytestmark = [pytest.mark.skipif(bool(_why), reason=_why), needs_fashion]

#: The two-run suite: dense and AC/DC for 4 epochs, the paper budget; on the whole training set, so that
#: an epoch (938 steps of 64) lasts seconds.
TWO_RUNS = ["reproduce", "--suite", "fashion-mnist", "--methods", "dense", "acdc", "--sparsities", "0.9", "--seeds",
            "0", "--budget", "paper", "--no-progress", "--set=batch_size=64",
            *[f"--set={o}" for o in SHORT if not o.startswith("train_subset")]]
#: The requeue and cancel tests' runs last 12 epochs. A job's task lives on for seconds after its
#: SIGTERM (submitit ignores it; the step died 7 s later on a 2-core AMD EPYC, with KillWait 2 or 0),
#: and an epoch lasts about 1.6 s there: a 4-epoch run requeued after its first epoch could end before
#: it was killed, leaving nothing to resume. 11 epochs left outlast that kill.
LONGER = ["--set=epochs=12", "--set=methods.acdc.schedule_epochs=12"]
SLURM = ["--launcher", "slurm", "--gpus-per-node", "0", "--cpus-per-task", "1", "--timeout-min", "30"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    from acdc_bench.run import launch

    monkeypatch.setattr(launch, "POLL_S", 0.5)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _queue(cluster) -> list[str]:
    return cluster.run("squeue", "-h", "-o", "%i %T %r").split("\n")[:-1]


def test_an_sbatch_refusal_is_one_line_naming_the_options(cluster, tmp_path, capsys):
    # the node has no GPU: --gpus-per-node 1 is a gres sbatch refuses
    code = main([*TWO_RUNS, "--out", str(tmp_path / "runs"), "--leaderboard-dir", str(tmp_path / "lb"),
                 "--launcher", "slurm", "--gpus-per-node", "1", "--cpus-per-task", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "sbatch refused the job of dense-" in err and "Invalid generic resource" in err
    assert "--gpus-per-node 1" in err and "--gpus-per-node (0 on a CPU partition)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _queue(cluster) == []


def test_a_job_slurm_can_never_start_is_cancelled_and_named(cluster, tmp_path, capsys):
    cpus = os.cpu_count() * 4  # more CPUs per task than the node has: pending for PartitionConfig for ever
    started = time.monotonic()
    code = main([*TWO_RUNS, "--out", str(tmp_path / "runs"), "--leaderboard-dir", str(tmp_path / "lb"),
                 "--launcher", "slurm", "--gpus-per-node", "0", "--cpus-per-task", str(cpus)])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - started < 60
    assert "Slurm can never start job" in err and "PartitionConfig" in err
    assert f"--cpus-per-task {cpus}" in err and "were cancelled" in err
    assert "Traceback" not in err
    assert _queue(cluster) == []  # nothing left pending


def _rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in csv.DictReader(f)]


def _numbers(run_dir) -> dict:
    result = json.loads((run_dir / "result.json").read_text())
    return {k: result[k] for k in ("top1", "actual_sparsity", "layer_densities", "training_flops", "steps", "examples_seen")}


def test_a_job_requeued_mid_run_resumes_and_ends_as_an_uninterrupted_run(cluster, tmp_path, capsys):
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    runs = [*TWO_RUNS, *LONGER]
    assert main([*runs, "--out", str(local), "--leaderboard-dir", str(tmp_path / "lb-local"), "--jobs", "1"]) == 0

    outcome = {}
    thread = threading.Thread(daemon=True, target=lambda: outcome.setdefault("code", main(
        [*runs, *SLURM, "--out", str(slurm), "--leaderboard-dir", str(tmp_path / "lb-slurm")])))
    thread.start()
    requeued, deadline = [], time.monotonic() + 300
    while not requeued and time.monotonic() < deadline and thread.is_alive():
        # requeue every running job once its run has finished an epoch and has more to train
        for run_dir in slurm.glob("*-seed0-*"):
            if (run_dir / "metrics.csv").exists() and len(_rows(run_dir)) >= 1 and not (run_dir / "result.json").exists():
                for line in _queue(cluster):
                    job_id, state, _ = line.split(" ", 2)
                    if state == "RUNNING":
                        cluster.run("scontrol", "requeue", job_id)
                        requeued.append(job_id)
                break
        time.sleep(0.2)
    # the moment Slurm has killed them (each requeued job pending again, or gone), no run may have ended
    asked = time.monotonic()
    while time.monotonic() < asked + 120 and any(
            line.split(" ")[0] in requeued and line.split(" ")[1] != "PENDING" for line in _queue(cluster)):
        time.sleep(0.2)
    ended = sorted(p.parent.name for p in slurm.glob("*/result.json"))
    killed_after = time.monotonic() - asked
    thread.join(timeout=600)
    printed = capsys.readouterr()
    assert requeued, f"no job was caught mid-run:\n{printed.out}\n{printed.err}"
    assert not ended, (f"{ended} ended before Slurm killed the requeued jobs ({killed_after:.0f} s after the "
                       "requeue): nothing was left to resume; the runs are too short for this machine")
    assert outcome.get("code") == 0, printed.err
    logs = sorted(slurm.glob("submitit/*/*_log.out"))
    resumed = [p for p in logs if "resuming from epoch" in p.read_text()]
    assert resumed, "the requeued job did not resume from its checkpoint:\n" + "\n".join(
        f"== {p}\n{p.read_text()}" for p in logs)
    runs = sorted(p.name for p in local.iterdir() if (p / "result.json").exists())
    assert len(runs) == 2 and runs == sorted(p.name for p in slurm.iterdir() if (p / "result.json").exists())
    for run_id in runs:
        assert _rows(slurm / run_id) == _rows(local / run_id), run_id  # every epoch's numbers, bit for bit
        assert _numbers(slurm / run_id) == _numbers(local / run_id), run_id


def test_a_job_cancelled_mid_run_is_a_failure_naming_its_logs(cluster, tmp_path, capsys):
    out = tmp_path / "runs"
    outcome = {}
    thread = threading.Thread(daemon=True, target=lambda: outcome.setdefault("code", main(
        [*TWO_RUNS[:4], "acdc", *TWO_RUNS[6:], *LONGER, *SLURM, "--out", str(out),
         "--leaderboard-dir", str(tmp_path / "lb")])))
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any("RUNNING" in line for line in _queue(cluster)):
        time.sleep(0.2)
    cluster.run("scancel", "-u", os.environ.get("USER", "root"))
    thread.join(timeout=180)
    printed = capsys.readouterr()
    assert not thread.is_alive(), "reproduce kept waiting on a job that left the queue"
    assert outcome.get("code") == 1, printed.err
    assert "FAILED: it left Slurm's queue without a result" in printed.out
    assert "1 job(s) failed: acdc-" in printed.err and "logs in" in printed.err and "Traceback" not in printed.err
