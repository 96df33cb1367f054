"""Portable numerics: pinned before torch starts, recorded, part of the run id, never mixed in one run."""

import os
import subprocess
import sys

import pytest
import yaml

from acdc_bench import numerics
from acdc_bench.config import load_suite, run_config
from helpers import needs_fashion

from helpers import ROOT
TINY = ["--suite", "fashion-mnist", "--method", "dense", "--sparsity", "0", "--budget", "paper", "--epochs", "1",
        "--set", "train_subset=256", "--no-progress"]


def _unpinned_environment() -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
    environment.pop(numerics.ENV_DEFAULT, None)
    return environment


def test_the_mode_is_part_of_the_run_id_and_checked():
    portable = run_config(load_suite("fashion-mnist-10", ["numerics=portable"]), "acdc", 0.9)
    native = run_config(load_suite("fashion-mnist-10", ["numerics=native"]), "acdc", 0.9)
    assert (portable.numerics, native.numerics) == ("portable", "native")
    assert portable.run_id != native.run_id
    with pytest.raises(ValueError, match="numerics 'fast' is unknown; allowed: portable, native"):
        load_suite("fashion-mnist-10", ["numerics=fast"])


def test_this_test_process_runs_the_default_numerics():
    """Portable unless the suite is run with ACDC_BENCH_NUMERICS=native (the host's own instructions)."""
    import torch

    assert numerics.active() == numerics.default_mode()
    if numerics.default_mode() == "portable":
        assert torch.backends.cpu.get_cpu_capability() == "AVX2"


def test_torch_started_without_the_pins_is_an_error_naming_the_fix(monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert numerics.active() == "native"
    with pytest.raises(numerics.NumericsError, match="MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell OPENBLAS_NUM_THREADS=1 before Python starts") as error:
        numerics.ensure("portable")
    assert "--numerics native" in str(error.value)
    numerics.ensure("native")  # the libraries' own choice: nothing to pin


def test_an_in_process_call_under_other_numerics_stops_before_training(tmp_path):
    code = ("import sys, torch; from acdc_bench.cli import main; "
            f"raise SystemExit(main(['run', '--out', {str(tmp_path)!r}, *{TINY!r}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_unpinned_environment(), capture_output=True,
                          text=True)
    assert done.returncode == 2, done.stderr
    assert "asks for portable numerics, but torch or numpy started in this process without them" in done.stderr
    assert not any(tmp_path.iterdir())


@needs_fashion
def test_the_command_line_restarts_itself_pinned_and_records_the_environment(tmp_path):
    """torch imported before the command line ran (as a wrapper script might): it re-executes itself
    with the pins set, trains, and config.yaml and result.json say what it ran under."""
    code = ("import sys, torch; from acdc_bench.cli import main; "
            f"sys.argv = ['acdc-bench', 'run', '--out', {str(tmp_path)!r}, *{TINY!r}]; raise SystemExit(main())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_unpinned_environment(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (config_path,) = tmp_path.glob("*/config.yaml")
    environment = yaml.safe_load(config_path.read_text())["environment"]
    assert environment["mode"] == environment["active"] == "portable"
    assert environment["aten_capability"] == "AVX2" and environment["environment"] == numerics.PORTABLE_ENV
    # sparseprop is built for the build machine's CPU: the fixed-order kernels run instead
    assert environment["kernels"] == "portable" and environment["linear_products"] == "openblas"
    assert environment["blas"]["core"] == numerics.PORTABLE_ENV["OPENBLAS_CORETYPE"]
    assert environment["cpu"] == numerics.cpu_model() and environment["threads"] >= 1


def test_a_run_folder_never_resumes_under_other_numerics(tmp_path):
    from acdc_bench.run.loop import train

    mode = numerics.default_mode()  # this process's
    other = "native" if mode == "portable" else "portable"
    config = run_config(load_suite("fashion-mnist", ["train_subset=256"]), "dense", 0.0, epochs=1)
    run_dir = tmp_path / config.run_id
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dict(config.as_dict(), numerics=other)))
    (run_dir / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(numerics.NumericsError, match=f"started under {other} numerics and cannot resume under {mode}"):
        train(config, tmp_path, progress=False, log=lambda *a: None)


def test_the_slurm_job_script_pins_portable_numerics():
    from acdc_bench.run.launch import Launch, slurm_parameters

    args = Launch()
    setup = slurm_parameters(load_suite("fashion-mnist-10", ["numerics=portable"]), args)["slurm_setup"]
    assert setup[:len(numerics.PORTABLE_ENV)] == [f"export {k}={v}" for k, v in numerics.PORTABLE_ENV.items()]
    assert setup[len(numerics.PORTABLE_ENV)].startswith("export TORCHINDUCTOR_CACHE_DIR=") and "aten-avx2" in setup[len(numerics.PORTABLE_ENV)]
    assert "slurm_setup" not in slurm_parameters(load_suite("fashion-mnist-10", ["numerics=native"]), args)


def test_portable_processes_keep_an_inductor_cache_of_their_own(monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    pinned = numerics.pinned_environment()
    assert pinned["TORCHINDUCTOR_CACHE_DIR"].endswith("_aten-avx2")
    assert {k: pinned[k] for k in numerics.PORTABLE_ENV} == numerics.PORTABLE_ENV
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/mine")  # the user's own choice is kept
    assert "TORCHINDUCTOR_CACHE_DIR" not in numerics.pinned_environment()
