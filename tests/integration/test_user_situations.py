"""A user's situation (a folder that cannot be written, Ctrl-C, a bad seed, a misspelt method, missing
data) is one line on stderr and a non-zero exit code, never a traceback; a run that fails before
writing anything leaves no folder it made."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acdc_bench.cli import main

#: A dense run on the small Fashion-MNIST files (tests/data_files.py), paper budget: nothing to plan.
PLAN = ["--suite", "fashion-mnist", "--method", "dense", "--sparsity", "0", "--budget", "paper"]
DENSE = [*PLAN, "--no-progress"]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_an_out_folder_that_cannot_be_written_is_one_line(tmp_path, capsys, small_fashion_root):
    (tmp_path / "afile").write_text("a file, not a folder")
    out = tmp_path / "afile" / "out"
    assert main(["run", "--out", str(out), *DENSE, "--data-root", str(small_fashion_root)]) == 2
    error = _lines(capsys.readouterr().err)
    assert len(error) == 1 and error[0].startswith("acdc-bench run: error: ")
    assert str(out) in error[0] and "Not a directory" in error[0] and "--out" in error[0]


def test_a_run_that_fails_before_writing_leaves_no_folder_it_made(tmp_path, capsys):
    out = tmp_path / "new" / "runs"
    assert main(["run", "--out", str(out), *DENSE, "--data-root", str(tmp_path / "no-data")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("acdc-bench run: error: fashion-mnist") and "Traceback" not in error
    assert not (tmp_path / "new").exists()  # neither --out nor the folder above it, both made by the run
    there = tmp_path / "there"
    there.mkdir()
    assert main(["run", "--out", str(there), *DENSE, "--data-root", str(tmp_path / "no-data")]) == 2
    assert there.is_dir() and not any(there.iterdir())  # a folder that was there stays


@pytest.mark.parametrize("command", [["run", *DENSE], ["plan", *PLAN], ["reproduce", "--dry-run", "--seeds", "0", "-2"]])
def test_a_negative_seed_is_refused(tmp_path, capsys, command):
    option = "--seeds" if command[0] == "reproduce" else "--seed"
    argv = command if option == "--seeds" else [*command, "--seed", "-1"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    error = _lines(capsys.readouterr().err)
    assert len(error) == 1 and f"{option} -" in error[0] and "a seed is an integer >= 0" in error[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["run", "plan"])
def test_an_unknown_method_is_said_before_any_planning(tmp_path, capsys, command):
    assert main([command, "--method", "RigL", "--sparsity", "0.9", "--set", "epochs=2",
                 "--out", str(tmp_path / "out")]) == 2
    error = _lines(capsys.readouterr().err)
    assert len(error) == 1 and "unknown method 'RigL'" in error[0] and "rigl" in error[0]
    assert "AC/DC" not in error[0] and "budget" not in error[0]


def _rows(run_dir: Path) -> int:
    try:
        return max(0, len((run_dir / "metrics.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


def test_ctrl_c_is_one_line_exit_130_and_the_same_command_resumes(tmp_path, small_fashion_root):
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "acdc_bench", "run", "--out", str(out), *DENSE,
               "--data-root", str(small_fashion_root), "--set", "epochs=40"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    # Ctrl-C's default action in the child, whatever this process inherited: a suite started in the
    # background of a non-interactive shell (`./nox -s tests &`) ignores SIGINT, and so would the run
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if out.is_dir() and any(_rows(run_dir) >= 1 for run_dir in out.iterdir()):
            break
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before it could be interrupted: {process.communicate()}"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    error = _lines(stderr)
    assert "Traceback" not in stderr and len(error) == 1
    assert error[0].startswith("acdc-bench run: interrupted") and "run the same command again to resume" in error[0]
    (run_dir,) = out.iterdir()
    assert not (run_dir / "result.json").exists() and _rows(run_dir) < 40
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "result.json").exists() and _rows(run_dir) == 40
