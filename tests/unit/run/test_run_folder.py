"""The run folder: its lock (two real processes), predictions, and the installed package."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from acdc_bench.config import load_suite, run_config
from acdc_bench.run.folder import RunLocked, lock_run, read_predictions, write_predictions

HOLD = ("import sys, time; from acdc_bench.run.folder import lock_run\n"
        "with lock_run(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n")


def _holder(run_dir: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_process_on_a_locked_run_is_refused_naming_the_holder(tmp_path):
    config = run_config(load_suite("fashion-mnist", ["train_subset=256"]), "dense", 0.0, epochs=1)
    (tmp_path / "config.json").write_text(json.dumps(config.as_dict()))
    run_dir = tmp_path / "runs" / config.run_id
    holder = _holder(run_dir)
    try:
        with pytest.raises(RunLocked, match=rf"pid {holder.pid}\b"):
            with lock_run(run_dir):
                pass
        # the command line says so too, and exits 2 without touching the folder
        code = ("import json, sys; from acdc_bench.run.loop import train\n"
                "train(json.loads(open(sys.argv[2]).read()), sys.argv[1])")
        other = subprocess.run([sys.executable, "-c", code, str(run_dir.parent), str(tmp_path / "config.json")],
                               capture_output=True, text=True)
        assert other.returncode != 0 and f"pid {holder.pid}" in other.stderr
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (run_dir / ".lock").exists()
    with lock_run(run_dir):  # the kernel released the dead holder's lock
        assert f"pid {os.getpid()}" in (run_dir / ".lock").read_text()


def test_predictions_round_trip_compactly(tmp_path):
    targets = np.arange(10_000) % 10
    final = (targets + (np.arange(10_000) % 7 == 0)) % 10
    write_predictions(tmp_path, targets=targets, final=final, dense=targets)
    read = read_predictions(tmp_path)
    assert set(read) == {"targets", "final", "dense"}
    assert np.array_equal(read["final"], final) and np.array_equal(read["dense"], targets)
    assert (tmp_path / "predictions.npz").stat().st_size < 10_000  # int16, compressed
    assert read_predictions(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="different lengths"):
        write_predictions(tmp_path, targets=targets, final=final[:5])


@pytest.mark.slow
def test_one_schema_says_what_a_result_holds_and_the_validator_reads_it_from_the_fields():
    import dataclasses
    import math

    from acdc_bench.run.folder import RESULT_REQUIRED_KEYS, Result, validate_result

    kinds = {"float": 0.5, "int": 3, "float | None": None, "int | None": None, "dict": {}, "list": [],
             "str": "x", "str | None": None}
    written = {f.name: kinds[f.type] for f in dataclasses.fields(Result)}
    written.update(schema_version=1, budget={"mode": "paper", "reference_training_flops": None, "achieved_ratio": None})
    assert list(dataclasses.asdict(Result(**written))) == [f.name for f in dataclasses.fields(Result)]
    with pytest.raises(TypeError):  # a writer that forgets a field, or adds one, fails where it writes
        Result(**{k: v for k, v in written.items() if k != "top1"})
    assert validate_result(written) == []
    optional = [f.name for f in dataclasses.fields(Result) if f.name not in RESULT_REQUIRED_KEYS]
    assert "top1_best" in optional and "top1" in RESULT_REQUIRED_KEYS
    assert validate_result({k: v for k, v in written.items() if k not in optional}) == []  # an older result
    assert validate_result({k: v for k, v in written.items() if k != "top1"}) == ["missing keys: top1"]
    for key, bad, says in (("top1", math.nan, "not a finite number"), ("top1_best", "80", "not a number or null"),
                           ("budget", [], "not an object"), ("seed", None, "not a finite number")):
        problems = validate_result(dict(written, **{key: bad}))
        assert any(problem.startswith(key) and says in problem for problem in problems), (key, problems)


def test_config_yaml_has_one_reader_that_names_a_broken_file(tmp_path):
    from acdc_bench.run.folder import UnreadableConfig, read_config

    assert read_config(tmp_path) is None
    (tmp_path / "config.yaml").write_text("method: acdc\nepochs: 4\n")
    assert read_config(tmp_path) == {"method": "acdc", "epochs": 4}
    (tmp_path / "config.yaml").write_text("method: [acdc\n")
    with pytest.raises(UnreadableConfig, match="config.yaml unreadable"):
        read_config(tmp_path)
    (tmp_path / "config.yaml").write_text("- a list\n")
    with pytest.raises(UnreadableConfig, match="not a mapping"):
        read_config(tmp_path)


def test_the_store_reads_what_the_loop_writes_through_it(tmp_path):
    """The RunStore is the one door to a run folder: what a run writes through it (config, progress,
    failure note, result) it reads back, and what it cannot read it says rather than raises."""
    from acdc_bench.run.store import RunStore

    store, run_id = RunStore(tmp_path / "runs"), "gmp-s0.9-seed0-e2-0123456789"
    assert not store.started(run_id) and store.result_as_written(run_id) is None and store.epochs_done(run_id) == 0
    assert store.checkpoint_path(run_id) is None and store.dense_step() is None and store.run_ids() == []
    store.folder(run_id).mkdir(parents=True)
    store.write_config(run_id, "method: gmp\nsparsity: 0.9\n")
    store.save_progress(run_id, {"state": {"epoch": 1}}, [{"epoch": 0, "phase": "sparse", "top1": 50.0}])
    assert store.started(run_id) and store.config(run_id) == {"method": "gmp", "sparsity": 0.9}
    assert store.epochs_done(run_id) == 1 and store.checkpoint_path(run_id) is not None
    assert store.run_ids("gmp-") == [run_id] and store.run_ids("acdc-") == []
    located, named = RunStore.locate(store.folder(run_id))
    assert RunStore.find(tmp_path) == [store.folder(run_id)] and (located.root, named) == (store.root, run_id)
    store.write_failure(run_id, "missed its target")
    assert store.failure(run_id) == "missed its target"
    (store.folder(run_id) / "result.json").write_text("{not json")
    result, problems = store.result_as_written(run_id)
    assert result is None and problems and "result.json unreadable" in problems[0]
    (store.folder(run_id) / "result.json").write_text(json.dumps({"top1": 50.0}))
    result, problems = store.result_as_written(run_id)
    assert result == {"top1": 50.0} and problems  # parsed, kept for the listing, and not a finished run
    path = store.write_dense_step({"seconds": 0.005, "rate": 7e10})
    assert path.parent == store.root and store.dense_step() == {"seconds": 0.005, "rate": 7e10}
    store.remove(run_id)
    assert not store.exists(run_id)
