"""Reports that cannot mislead, inputs never ignored: one row is one configuration, each seed once,
nothing skipped, dropped or overwritten in silence, and bad input refused before any work."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import pandas as pd
import pytest
from torch import nn

import acdc_bench
from acdc_bench import cli
from acdc_bench.cli import main
from helpers import SHORT, needs_fashion

BASE = ["--suite", "fashion-mnist", "--no-progress", "--budget", "paper", *[f"--set={item}" for item in SHORT],
        "--set=train_subset=512"]


def _run(out, *args) -> int:
    return main(["run", "--out", str(out), *BASE, *args])


def _folder(out, prefix: str, exclude=()):
    (found,) = [p for p in out.iterdir() if p.name.startswith(prefix) and p not in exclude]
    return found


@needs_fashion
def test_compare_keeps_unlike_runs_apart_counts_a_seed_once_and_lists_what_it_skips(tmp_path, capsys, one_thread):
    runs = tmp_path / "runs"
    assert _run(runs, "--method", "gmp", "--sparsity", "0.9") == 0
    plain = _folder(runs, "gmp")
    assert _run(runs, "--method", "gmp", "--sparsity", "0.9", "--set", "methods.gmp.end_fraction=0.5") == 0
    other_option = _folder(runs, "gmp", exclude=[plain])
    assert _run(runs, "--method", "gmp", "--sparsity", "0.9", "--epochs", "2") == 0
    assert _run(runs, "--method", "acdc", "--sparsity", "0.5") == 0
    assert _run(runs, "--method", "acdc", "--sparsity", "0.5", "--set", "methods.acdc.pattern=2:4",
                "--set", "methods.acdc.distribution=uniform") == 0
    # the same run once more under another folder name (a copy, finished later), and a corrupt one
    again = runs / "gmp-copy-of-the-plain-run"
    shutil.copytree(plain, again)
    time.sleep(0.01)
    os.utime(again / "result.json")
    broken = runs / "gmp-broken"
    shutil.copytree(other_option, broken)
    (broken / "result.json").write_text((broken / "result.json").read_text()[:200])
    capsys.readouterr()

    out = tmp_path / "report"
    assert main(["compare", "--suite", "fashion-mnist", "--runs", str(runs), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    table = pd.read_csv(out / "compare.csv")
    gmp = table[table["method"] == "gmp"]
    assert len(gmp) == 3 and gmp["seeds"].tolist() == [1, 1, 1]  # three configurations, seed 0 once each
    assert gmp["differs"].str.contains("end_fraction=0.5").sum() == 1
    assert gmp["differs"].str.contains("epochs=2").sum() == 1
    acdc = table[table["method"] == "acdc"]
    assert len(acdc) == 2 and acdc["differs"].str.contains("pattern=2:4").sum() == 1
    assert f"skipped {broken}: corrupt: result.json unreadable" in printed.err
    assert f"{again} (finished last) supersedes {plain}" in printed.err
    assert "*" in printed.out  # rows that differ from a sibling are marked in the table


def _trained_result(runs, method: str, sparsity: str):
    """Train one short run into ``runs``; returns its result.json path and contents, to be edited."""
    assert _run(runs, "--method", method, "--sparsity", sparsity) == 0
    result = _folder(runs, method) / "result.json"
    return result, json.loads(result.read_text())


@needs_fashion
def test_a_corrupt_result_stops_run_naming_the_file(tmp_path, capsys, one_thread):
    runs = tmp_path / "runs"
    result, data = _trained_result(runs, "dense", "0")
    result.write_text(json.dumps(dict(data, top1="oops")))
    capsys.readouterr()
    assert _run(runs, "--method", "dense", "--sparsity", "0") == 2
    error = capsys.readouterr().err
    assert f"{result} is not a valid result (top1 is 'oops', not a finite number)" in error
    assert "delete" in error


@needs_fashion
def test_a_run_off_its_budget_is_flagged_in_every_table(tmp_path, capsys, one_thread):
    runs = tmp_path / "runs"
    result, data = _trained_result(runs, "gmp", "0.9")
    data["budget"].update(mode="matched", achieved_ratio=1.177)
    result.write_text(json.dumps(data))
    boards = tmp_path / "boards"
    assert main(["leaderboard", "--suite", "fashion-mnist", "--runs", str(runs), "--out", str(boards)]) == 0
    out = capsys.readouterr().out
    assert "NOT a matched comparison: over or under budget: 1 of 1 matched run(s) spent 1.177x" in out
    board = pd.read_csv(boards / "fashion-mnist.csv")
    ours = board[board["source"] == "acdc_bench"]
    assert ours["note"].str.contains("1.177x").all() and (ours["train_subset"] == 512).all()
    assert ours["overrides"].str.contains("train_subset=512").all()


def test_nothing_to_compare_is_an_error_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    out = tmp_path / "out"
    assert main(["compare", "--suite", "fashion-mnist", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 2
    assert "nothing to compare" in capsys.readouterr().err and not out.exists()
    assert main(["leaderboard", "--suite", "fashion-mnist", "--runs", str(tmp_path / "missing")]) == 2
    assert "no run folder" in capsys.readouterr().err


@needs_fashion
def test_leaderboard_writes_beside_the_runs_never_into_the_shipped_folder(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    shipped = tmp_path / "leaderboards"
    shipped.mkdir()
    (shipped / "fashion-mnist.csv").write_text("shipped\n")
    runs = tmp_path / "runs" / "fashion-mnist"
    assert _run(runs, "--method", "dense", "--sparsity", "0") == 0
    assert main(["leaderboard", "--suite", "fashion-mnist"]) == 0
    assert (shipped / "fashion-mnist.csv").read_text() == "shipped\n"
    assert (runs / "leaderboard" / "fashion-mnist.csv").exists() and (runs / "leaderboard" / "compare.md").exists()
    assert not (runs / "compare.md").exists()


def test_epochs_under_a_matched_budget_is_refused_with_the_way_out(capsys):
    assert main(["plan", "--method", "gmp", "--sparsity", "0.9", "--epochs", "2", "--budget", "matched"]) == 2
    error = capsys.readouterr().err
    assert "--epochs 2 with a matched budget" in error and "--budget paper" in error and "--set epochs=2" in error


def test_a_plugin_loads_before_its_suite_options_are_validated(tmp_path, monkeypatch, capsys):
    (tmp_path / "honest_plugin.py").write_text(
        "from dataclasses import dataclass\n"
        "from acdc_bench.methods import MaskedConfig, MaskedMethod, register_method\n"
        "@dataclass\nclass Options(MaskedConfig):\n    ramp: float = 0.5\n"
        "@register_method('honest-static')\nclass Static(MaskedMethod):\n    Config = Options\n"
        "    def on_epoch_start(self, epoch):\n        if not self.masking:\n"
        "            self.prune_by_magnitude(self.target_sparsity)\n"
        "    def planned_densities(self, epoch):\n        return self.distribution_densities(self.target_sparsity)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["plan", "--plugin", "honest_plugin", "--method", "honest-static", "--sparsity", "0.9",
                 "--budget", "paper", "--set", "methods.honest-static.ramp=0.3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "honest-static"


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--out", str(out), "--method", "dense", "--sparsity", "0", "--budget", "paper",
                 "--data-root", str(tmp_path / "no-data"), "--no-progress"]) == 2
    assert "fashion-mnist" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_an_nm_pattern_that_cannot_reach_the_target_is_refused_before_training():
    model = nn.Sequential(nn.Linear(16, 8))
    with pytest.raises(ValueError, match=r"sparsify: .*2:4.*pattern"):
        acdc_bench.sparsify(model, "acdc", sparsity=0.9, steps_per_epoch=1, epochs=4, input_shape=(16,),
                            pattern="2:4", distribution="uniform", schedule_epochs=4, warmup_epochs=1,
                            phase_epochs=1, final_dense_epochs=1, final_sparse_epochs=1)


def test_gmp_reads_dense_until_its_first_mask():
    model = nn.Sequential(nn.Linear(16, 8))
    sparsifier = acdc_bench.sparsify(model, "gmp", sparsity=0.9, steps_per_epoch=10, epochs=10, input_shape=(16,))
    method = sparsifier.method  # pruning from step 31 (0.3125 of 100): epochs 0-2 hold no mask
    assert [method.phase(epoch) for epoch in range(5)] == ["dense", "dense", "dense", "sparse", "sparse"]
    assert sparsifier.phase == "dense" and sparsifier.mask_sparsity == 0.0


def test_every_option_has_help_and_the_command_shows_examples(capsys):
    from acdc_bench.models import model_names

    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"acdc-bench {name} {action.option_strings[0]} has no help"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert text.count("\n  acdc-bench ") == 3
    assert list(cli.MODEL_CHOICES) == model_names()
    with pytest.raises(SystemExit):
        main(["flops", "--help"])
    flops_help = capsys.readouterr().out
    assert "lenet-300-100" in flops_help and "(default: resnet50)" in flops_help


def test_acdc_fits_a_short_run_by_default_keeping_its_proportions():
    from acdc_bench.methods.acdc import acdc_phases

    def text(phases):
        return "".join("S" if phase == "sparse" else "d" for phase in phases)

    model = nn.Sequential(nn.Linear(16, 8))  # the default lengths, written for 100 epochs, in a 10-epoch run
    sparsifier = acdc_bench.sparsify(model, "acdc", sparsity=0.9, steps_per_epoch=1, epochs=10, input_shape=(16,))
    assert text(sparsifier.method.phases) == "dSdSdSdSSS"
    assert text(acdc_phases(100, 10, 5, 10, 15)) == "d" * 10 + "SSSSSddddd" * 6 + "SSSSS" + "d" * 10 + "S" * 15
    assert text(acdc_phases(4, 1, 1, 2, 2, schedule_epochs=10)) == "SdSS"  # fewer phases, same shape
    with pytest.raises(ValueError, match=r"too short .* sparsify\(\.\.\., schedule_epochs=\.\.\..*methods\.acdc\.preset"):
        acdc_phases(2, 10, 5, 10, 15)


def test_a_matched_run_says_when_its_reference_cannot_be_planned(capsys):
    assert main(["plan", "--method", "gmp", "--sparsity", "0.9", "--set", "epochs=2",
                 "--set", "methods.acdc.schedule_epochs=null"]) == 2
    error = capsys.readouterr().err
    assert "acdc is this suite's budget reference (budget.reference)" in error and "too short" in error


def test_slurm_jobs_on_a_cpu_partition_ask_for_no_gpu():

    from acdc_bench.config import load_suite
    from acdc_bench.run.launch import Launch, slurm_parameters

    suite = load_suite("fashion-mnist-10")
    args = cli.build_parser().parse_args(["reproduce", "--launcher", "slurm", "--gpus-per-node", "0",
                                          "--cpus-per-task", "2", "--slurm-partition", "cpu"])
    cpu = slurm_parameters(suite, Launch.from_args(args))
    assert "gpus_per_node" not in cpu and cpu["tasks_per_node"] == 1 and cpu["cpus_per_task"] == 2
    assert cpu["slurm_partition"] == "cpu"
    default = slurm_parameters(suite, Launch())
    assert (default["gpus_per_node"], default["tasks_per_node"], default["cpus_per_task"]) == (1, 1, 8)
    two = slurm_parameters(suite.replace(resources={"gpus_per_node": 2}), Launch())
    assert (two["gpus_per_node"], two["tasks_per_node"]) == (2, 2)  # one DDP task per GPU


@needs_fashion
def test_the_smoke_run_of_the_help_trains_in_seconds_under_the_matched_budget(tmp_path, capsys, one_thread):
    import shlex

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert cli.SMOKE_RUN in capsys.readouterr().out
    argv = shlex.split(cli.SMOKE_RUN)[1:]
    started = time.perf_counter()
    assert main([*argv, "--out", str(tmp_path), "--no-progress"]) == 0
    (run_dir,) = tmp_path.iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["budget"]["mode"] == "matched" and result["target_sparsity"] == 0.9
    assert time.perf_counter() - started < 60


class _FakeJob:
    def __init__(self, job_id):
        self.job_id = job_id


def test_a_slurm_job_pending_for_ever_is_cancelled_with_the_options_to_change(monkeypatch):
    import subprocess

    from acdc_bench.run import launch

    cancelled = []
    monkeypatch.setattr(launch, "_queue", lambda ids: {"7": ("RUNNING", "None"), "8": ("PENDING", "PartitionConfig")})
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: cancelled.append(command))
    with pytest.raises(launch.SlurmError, match=r"can never start job 8 of b .*PartitionConfig.*--cpus-per-task 8"):
        launch._watch_slurm([("a", _FakeJob("7")), ("b", _FakeJob("8"))], "--cpus-per-task 8", 1)
    assert cancelled == [["scancel", "7", "8"]]


def test_a_slurm_job_pending_for_resources_or_requeued_is_waited_on(monkeypatch):
    from acdc_bench.run import launch

    looks = iter([{"7": ("PENDING", "Resources")}, {"7": ("PENDING", "BeginTime")}, {"7": ("RUNNING", "None")}, {}])
    monkeypatch.setattr(launch, "_queue", lambda ids: next(looks))
    monkeypatch.setattr(launch, "POLL_S", 0)
    launch._watch_slurm([("a", _FakeJob("7"))], "", 1)  # returns once the job has left the queue
    assert next(looks, "all read") == "all read"


def test_sparsify_refuses_an_str_target_it_cannot_honour_naming_the_options():
    model = nn.Sequential(nn.Linear(16, 8))
    with pytest.raises(ValueError, match=r"str's sparsity follows its options, not sparsity=0\.9: give lam=, s_init=, "
                                         r"targets="):
        acdc_bench.sparsify(model, "str", sparsity=0.9, steps_per_epoch=1, epochs=1, input_shape=(16,))
    sparsifier = acdc_bench.sparsify(model, "str", sparsity=0.9, steps_per_epoch=1, epochs=1, input_shape=(16,),
                                     lam=1e-4, s_init=-100.0)
    with pytest.warns(UserWarning, match="sparsity 0.0000 at the end"):
        sparsifier.finalize()
