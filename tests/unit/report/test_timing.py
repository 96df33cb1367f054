"""The FLOP-ideal table (acdc_bench.report.timing) and the dense step behind its rate
(acdc_bench.run.steptime)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from acdc_bench import numerics
from acdc_bench.config import load_suite
from acdc_bench.models import build_model
from acdc_bench.report.timing import flop_ideal_table, format_flop_ideal
from acdc_bench.run.launch import Launch
from acdc_bench.run.store import RunStore
from helpers import needs_fashion


def _runs() -> pd.DataFrame:
    return pd.DataFrame([
        {"method": "dense", "status": "finished", "training_flops": 100.0, "wall_time_s": 20.0},
        {"method": "rigl", "status": "finished", "training_flops": 50.0, "wall_time_s": 40.0},
        {"method": "rigl", "status": "finished", "training_flops": 50.0, "wall_time_s": 20.0},
        {"method": "rigl", "status": "failed", "training_flops": 50.0, "wall_time_s": 99.0},
    ])


def test_the_ideal_time_is_the_metered_flops_at_the_given_rate():
    table = flop_ideal_table(_runs(), rate=10.0).set_index("method")
    assert table.loc["rigl", "runs"] == 2 and table.loc["rigl", "flop_ideal_s"] == 10.0
    assert table.loc["rigl", "ratio"] == 6.0 and table.loc["dense", "ratio"] == 2.0
    assert table.loc["total", "wall_time_s"] == 80.0 and table.loc["total", "ratio"] == 4.0
    # without a timed step: the dense runs' own rate (100 FLOPs in 20 s), dense at 1 by construction
    assert flop_ideal_table(_runs()).set_index("method").loc["dense", "ratio"] == 1.0
    text = format_flop_ideal(flop_ideal_table(_runs(), rate=10.0),
                             {"seconds": 0.1, "rate": 10.0, "steps": 300, "threads": 1})
    assert "the fastest block among 300 timed steps" in text and "ratio 6.00x" in text


@needs_fashion
def test_the_dense_step_is_timed_as_a_run_trains_it():
    from acdc_bench.run.steptime import dense_step

    suite = load_suite("fashion-mnist-10", ["train_subset=2048"])
    before = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    step = dense_step(suite, steps=20, warmup=2, block=10)
    assert torch.equal(torch.random.get_rng_state(), before) and torch.get_num_threads() == threads
    parameters = sum(p.numel() for p in build_model("lenet-300-100", 10).parameters() if p.dim() > 1)
    assert step["flops"] == 3 * 2 * parameters * suite.batch_size  # multiply-add = 2 FLOPs, backward = 2x
    assert 0 < step["seconds"] <= step["median"] and step["rate"] == pytest.approx(step["flops"] / step["seconds"])
    assert step["threads"] == (1 if numerics.active() == "portable" else threads)


def test_a_dense_step_timed_on_this_cpu_is_reused_and_one_of_another_is_not(tmp_path, monkeypatch, capsys):
    """``reproduce`` keeps the dense step it timed in ``<out>/dense-step.json``; a later invocation on
    the same CPU, numerics, threads and torch reuses it (the FLOP-ideal table does not move), one
    under any other of these times it again."""
    import json

    from acdc_bench import cli
    from acdc_bench.run import steptime

    timed = []
    monkeypatch.setattr(steptime, "dense_step", lambda suite, data_root=None, seconds=None: timed.append(1) or
                        {"seconds": 0.005, "median": 0.006, "rate": 7e10, "steps": 300, "threads": 1, "flops": 3.5e8})
    suite, args = load_suite("fashion-mnist-10"), Launch()
    assert cli._dense_step(suite, args, tmp_path, seconds=0) is None and timed == []
    assert "dense step not timed (--dense-step-seconds 0)" in capsys.readouterr().out
    first = cli._dense_step(suite, args, tmp_path)
    assert timed == [1] and "GFLOP/s on 1 thread(s)" in capsys.readouterr().out
    (tmp_path / RunStore.DENSE_STEP).write_text(json.dumps(first))
    assert cli._dense_step(suite, args, tmp_path) == first and timed == [1]
    assert "timed on this CPU by an earlier invocation" in capsys.readouterr().out
    (tmp_path / RunStore.DENSE_STEP).write_text(json.dumps(dict(first, cpu="another CPU")))
    cli._dense_step(suite, args, tmp_path)
    assert timed == [1, 1]


def test_dense_step_seconds_bounds_the_timing_and_is_checked(monkeypatch, capsys):
    """``reproduce --dense-step-seconds S`` times the dense step for at most S seconds (default
    steptime.SECONDS, named in the help); a negative or non-numeric S is refused naming the option."""
    from acdc_bench import cli
    from acdc_bench.run import steptime

    asked = []
    monkeypatch.setattr(steptime, "dense_step", lambda suite, data_root=None, seconds=None: asked.append(seconds))
    parser = cli.build_parser()
    for given, expected in ((["--dense-step-seconds", "1.5"], 1.5), ([], steptime.SECONDS)):
        args = parser.parse_args(["reproduce", *given])
        cli._dense_step(load_suite("fashion-mnist-10"), Launch(), Path("unused"), args.dense_step_seconds)
        assert asked[-1] == expected
    with pytest.raises(SystemExit):
        parser.parse_args(["reproduce", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default {steptime.SECONDS:g};" in help_text
    for bad in ("-1", "soon", "inf"):
        with pytest.raises(SystemExit):
            parser.parse_args(["reproduce", "--dense-step-seconds", bad])
        assert f"--dense-step-seconds must be a number of seconds >= 0, got '{bad}'" in capsys.readouterr().err


def test_an_invocation_says_what_it_trained(capsys):

    from acdc_bench.cli import print_timing

    print_timing(_runs(), (0, 0.0), Launch(jobs=2))
    assert "this invocation trained nothing: every run had finished before" in capsys.readouterr().out
    print_timing(_runs(), (2, 75.0), Launch(jobs=2))
    assert "this invocation trained 2 run(s) in 1m15s elapsed, in 2 jobs side by side" in capsys.readouterr().out
