"""The reproduce launcher: run order (plan_runs), one submitit job per run, and requeue-and-resume."""

import json
import pickle

import pandas as pd
import pytest

from acdc_bench.cli import main
from acdc_bench.config import load_suite, run_config
from acdc_bench.run.launch import RunJob, RunSpec, plan_runs
from acdc_bench.methods.dense import Dense
from acdc_bench.methods.registry import _REGISTRY
from acdc_bench.config.run import RunConfig

from helpers import SHORT, needs_fashion



@pytest.fixture
def other_method(monkeypatch):
    """A registered stand-in for a baseline (registry restored after the test)."""
    monkeypatch.setitem(_REGISTRY, "other-method", Dense)
    return "other-method"


def test_plan_runs_puts_dense_and_the_budget_reference_in_wave_zero(other_method):
    suite = load_suite("fashion-mnist")  # budget: matched to acdc
    waves = plan_runs(suite, methods=[other_method, "acdc", "dense"], sparsities=[0.9, 0.95], seeds=[0, 1])
    assert len(waves) == 2
    first, second = waves
    assert first[0] == RunSpec("dense", 0.0, 0, "matched")
    assert {(s.method, s.sparsity, s.seed) for s in first} == {
        ("dense", 0.0, 0), ("dense", 0.0, 1),
        ("acdc", 0.9, 0), ("acdc", 0.95, 0), ("acdc", 0.9, 1), ("acdc", 0.95, 1)}
    assert {(s.method, s.sparsity, s.seed) for s in second} == {
        (other_method, 0.9, 0), (other_method, 0.95, 0), (other_method, 0.9, 1), (other_method, 0.95, 1)}
    assert all(s.budget == "matched" for wave in waves for s in wave)

    # under the paper budget nothing waits for a reference: one wave, dense first
    (only,) = plan_runs(suite, methods=[other_method, "acdc", "dense"], sparsities=[0.9], seeds=[0], budget="paper")
    assert [s.method for s in only] == ["dense", other_method, "acdc"]

    # the reference is the suite's, whichever method it is
    suite = suite.replace(budget={**suite.budget, "reference": other_method})
    first, second = plan_runs(suite, methods=["dense", "acdc", other_method], sparsities=[0.9], seeds=[0])
    assert [s.method for s in first] == ["dense", other_method] and [s.method for s in second] == ["acdc"]

    with pytest.raises(ValueError, match="unknown method"):
        plan_runs(suite, methods=["dense", "no-such-method"])


def test_run_job_checkpoint_resubmits_an_equivalent_job(tmp_path):
    import submitit

    config = run_config(load_suite("fashion-mnist", SHORT), "acdc", 0.9)
    job = RunJob(config, str(tmp_path), "/some/data")
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert isinstance(delayed.function, RunJob) and delayed.function is not job
    assert (delayed.function.config, delayed.function.out, delayed.function.data_root) == (config.as_dict(), str(tmp_path),
                                                                                         "/some/data")
    assert delayed.args == () and delayed.kwargs == {}
    clone = pickle.loads(pickle.dumps(delayed))  # submitit pickles it for the requeued job
    assert RunConfig.from_dict(clone.function.config) == config


class _Preempted(Exception):
    pass


@needs_fashion
def test_requeued_job_resumes_from_the_run_folders_checkpoint(tmp_path, capsys, one_thread):
    from acdc_bench.run.loop import train

    config = run_config(load_suite("fashion-mnist", SHORT), "acdc", 0.9)

    def preempt_during_epoch_3(message):
        if "epoch 3/4" in message:  # logged before epoch 3's checkpoint: the one of epoch 2 is on disk
            raise _Preempted

    with pytest.raises(_Preempted):
        train(config, tmp_path, progress=False, log=preempt_during_epoch_3)
    run_dir = tmp_path / config.run_id
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "result.json").exists()

    delayed = RunJob(config, str(tmp_path), None).checkpoint()
    capsys.readouterr()
    result = delayed.function(*delayed.args, **delayed.kwargs)  # what the requeued job runs
    out = capsys.readouterr().out
    assert "resuming from epoch 2/4" in out
    assert "epoch 1/4" not in out and "epoch 3/4" in out  # only the missing epochs are trained
    assert (run_dir / "result.json").exists() and not (run_dir / "checkpoint.pt").exists()
    assert result["steps"] == 4 * 8 and result["examples_seen"] == 4 * 2000


@needs_fashion
def test_reproduce_through_submitit_local_runs_each_run_as_a_job(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two jobs at once on a small machine
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out, leaderboards = tmp_path / "runs", tmp_path / "lb"
    args = ["reproduce", "--suite", "fashion-mnist", "--methods", "dense", "acdc", "--sparsities", "0.9", "--seeds", "0",
            "--budget", "paper", "--launcher", "submitit-local", "--out", str(out),
            "--leaderboard-dir", str(leaderboards), "--no-progress", *[f"--set={o}" for o in SHORT]]
    assert main(args) == 0
    printed = capsys.readouterr().out
    results = sorted(out.glob("*/result.json"))
    assert len(results) == 2
    methods = {json.loads(p.read_text())["method"] for p in results}
    assert methods == {"dense", "acdc"}
    # each run was its own job, with its own submitit folder (logs and pickles)
    jobs = [p for p in (out / "submitit").iterdir() if p.is_dir() and p.name != "%j"]
    assert len(jobs) == 2
    assert printed.count("submitted") == 2 and "finished" in printed
    # the comparison is aggregated from the same run folders
    table = pd.read_csv(out / "compare.csv")
    assert set(table["method"]) == {"dense", "acdc"}
    assert (leaderboards / "fashion-mnist.csv").exists()
    # a second reproduce finds both runs finished and submits nothing
    assert main(args) == 0
    assert "submitted" not in capsys.readouterr().out
