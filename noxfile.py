"""nox sessions of acdc_bench. Every session shares one environment, ``.venv`` beside this file.

torch (a multi-GB CUDA build) is installed into it once, not once per session: each
session checks what is there and installs only what is missing or changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests"]

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("ACDC_BENCH_VENV", ROOT / ".venv"))
PYTHON = VENV / "bin" / "python"
TORCH = {"torch": "2.14.1", "torchvision": "0.29.1"}
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _installed(*names: str, python: Path = PYTHON) -> dict:
    """The installed versions of ``names`` in an environment (the shared one by default), from the
    packages' metadata: importing torch to ask would cost seconds on every session."""
    probe = ("import importlib.metadata as m, sys\n"
             "for name in sys.argv[1:]:\n"
             "    try: print(name, m.version(name).split('+')[0])\n"
             "    except m.PackageNotFoundError: pass")
    result = subprocess.run([str(python), "-c", probe, *names], capture_output=True, text=True)
    return dict(line.split() for line in result.stdout.splitlines()) if result.returncode == 0 else {}


def _fashion_mnist(session: nox.Session) -> None:
    """The default suite's data. As root with apt, the Debian package (a fast path); otherwise the run
    downloads it into the per-user cache (acdc_bench.data.download_dataset), checked, no root needed."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "acdc-bench" / "fashion-mnist"
    if FASHION_MNIST.exists() or os.environ.get("ACDC_BENCH_DATA") or cache.exists():
        return
    if shutil.which("apt-get") and getattr(os, "geteuid", lambda: -1)() == 0:
        session.log("installing the Debian package dataset-fashion-mnist (the default suite's data)")
        try:
            session.run("apt-get", "update", "-qq", external=True)
            session.run("apt-get", "install", "-y", "-qq", "dataset-fashion-mnist", external=True,
                        env={"DEBIAN_FRONTEND": "noninteractive"})
            return
        except Exception as error:  # nox raises its own CommandFailed
            session.warn(f"apt-get did not install dataset-fashion-mnist ({error})")
    session.log(f"Fashion-MNIST is not installed: the run downloads it (30 MB, checked against its "
                f"published MD5s) into {cache}")


def _sparseprop(session: nox.Session) -> None:
    """sparseprop (sparse CPU kernels, acdc_bench.core.kernels), best effort: it builds from source
    with -march=native and only without build isolation; without it every layer runs densely.
    Installed means its package metadata is there: a failed build leaves none, and its extension
    links no torch library (ldd), so a torch reinstall does not break it."""
    if _installed("sparseprop"):
        return
    failed = VENV / ".sparseprop-build-failed"  # delete it to try again
    if failed.exists():
        session.warn(f"sparseprop is not installed (its build failed before; delete {failed} to retry): "
                     "masked layers run densely")
        return
    session.log("building sparseprop (sparse CPU kernels) once into the shared environment")
    # its setup.py asks the PATH's `python3 -m pybind11 --includes`: the environment's own Python
    # first on the PATH, so that it answers (a system python3 without pybind11 gives no include path)
    path = os.pathsep.join([str(PYTHON.parent), os.environ.get("PATH", "")])
    try:
        session.run(str(PYTHON), "-m", "pip", "install", "-q", "pybind11", "wheel", external=True)
        session.run(str(PYTHON), "-m", "pip", "install", "-q", "--no-build-isolation", "sparseprop==0.1.14",
                    external=True, env={"PATH": path})
    except Exception as error:  # nox raises its own CommandFailed
        failed.write_text(str(error))
        session.warn(f"sparseprop did not build ({error}); masked layers run densely (kernels: dense)")


def _make_venv(session: nox.Session, venv: Path, interpreter: str) -> None:
    """``interpreter -m venv venv``; where its venv has no ensurepip (Debian and Ubuntu without
    python3-venv), an environment without pip, into which the interpreter's own pip installs pip
    (``pip --python``, pip >= 22.3). Nothing is installed into the interpreter itself."""
    made = subprocess.run([interpreter, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode == 0:
        return
    shutil.rmtree(venv, ignore_errors=True)
    why = (made.stderr or made.stdout).strip().splitlines()[-1:] or ["no message"]
    has_pip = subprocess.run([interpreter, "-m", "pip", "--python", interpreter, "--version"],
                             capture_output=True).returncode == 0
    if not has_pip:
        session.error(f"{interpreter} -m venv failed ({why[0]}) and this Python has no pip >= 22.3 to fill an "
                      "environment: install python3-venv (sudo apt install python3-venv) or run nox from another Python")
    session.run(interpreter, "-m", "venv", "--without-pip", str(venv), external=True)
    session.run(interpreter, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "pip", external=True)


def _prepare(session: nox.Session, venv: Path, interpreter: str) -> Path:
    """Create ``venv`` from ``interpreter`` unless it exists; install torch into it once and the
    project (editable, with its test extra) whenever pyproject.toml changed; returns its python."""
    python = venv / "bin" / "python"
    if not python.exists():
        session.log(f"creating the environment {venv}")
        _make_venv(session, venv, interpreter)
        session.run(str(python), "-m", "pip", "install", "-q", "--upgrade", "pip", external=True)
    if _installed(*TORCH, python=python) != TORCH:
        session.log(f"installing torch and torchvision once into {venv}")
        session.run(str(python), "-m", "pip", "install", *(f"{k}=={v}" for k, v in TORCH.items()), external=True)
    stamp = venv / ".acdc-bench-installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        session.run(str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]", external=True)
        stamp.write_text(digest)
    return python


def environment(session: nox.Session) -> str:
    """Create or update the shared environment; returns its python."""
    _prepare(session, VENV, sys.executable)
    _sparseprop(session)
    _fashion_mnist(session)
    session.env.setdefault("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    return str(PYTHON)


def _cli(session: nox.Session, *args: str) -> None:
    session.run(environment(session), "-m", "acdc_bench", *args, external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite and every benchmark once on its short workload (pytest's ``testpaths``:
    ``tests`` and ``benchmarks``; the timed benchmarks are ``nox -s bench``).

    They run in one pytest-xdist worker per core (at most 4), each on one thread
    (``tests/conftest.py``): most of them train on one thread, so two workers on two cores take
    about half the time of one; a worker out of tests takes queued ones from the other (``worksteal``),
    so the longest tests do not end on one worker. ``nox -s tests -- -n 0 ...`` runs them in this process."""
    python = environment(session)
    workers = ["-n", "auto", "--maxprocesses", "4", "--dist", "worksteal"]
    session.run(python, "-m", "pytest", "-q", *workers, *session.posargs, external=True)


def _interpreter(version: str) -> str | None:
    """A ``python<version>`` that runs: the PATH's, else one of pyenv's installed versions (pyenv's shim
    on the PATH refuses a version that is installed but not selected)."""
    candidates = [shutil.which(f"python{version}")]
    if shutil.which("pyenv"):
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
        if root:
            candidates += sorted(Path(root, "versions").glob(f"{version}.*/bin/python{version}"), reverse=True)
    for candidate in filter(None, candidates):
        if subprocess.run([str(candidate), "-c", "pass"], capture_output=True).returncode == 0:
            return str(candidate)
    return None


#: The supported Pythons besides the one nox runs on: ``nox -s pythons`` runs the unit tests and the
#: behaviour record on each (CI runs it), in an environment of its own, ``.venv-py<version>``.
OTHER_PYTHONS = ("3.10", "3.13")


@nox.session
def pythons(session: nox.Session) -> None:
    """The unit tests and the behaviour record (bit for bit) on Python 3.10 and 3.13 (``-- 3.12``: others),
    each found as ``python3.X`` on the PATH or among pyenv's versions, with any warning raised from the
    project's own code an error. torch is installed once per environment (its CUDA build from the
    index for a Python whose wheel is not on the machine's disk)."""
    for version in session.posargs or OTHER_PYTHONS:
        interpreter = _interpreter(version)
        if interpreter is None:
            session.error(f"python{version} is not on the PATH: install it (pyenv install {version}, or your "
                          f"system's python{version}) or name the versions to test: nox -s pythons -- 3.11")
        python = _prepare(session, ROOT / f".venv-py{version}", interpreter)
        session.run(str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "auto", "--maxprocesses", "4",
                    # the ini form's module is a prefix (acdc_bench.*); -W's would be the exact module name.
                    # A FutureWarning is an error wherever pandas or matplotlib raise it for the project's calls.
                    "-o", "filterwarnings=error:::acdc_bench", "-W", "error::FutureWarning", "tests/unit",
                    "tests/integration/test_behaviour.py", external=True, env={"WANDB_MODE": "offline"})


SLURM_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")


@nox.session
def slurm(session: nox.Session) -> None:
    """``reproduce --launcher slurm`` against a real single-node Slurm on 127.0.0.1 (Debian's slurmctld,
    slurmd and munge, installed here when missing): a two-run suite on a CPU partition with a job
    requeued mid-run, held equal to the same runs without Slurm; an sbatch refusal and a job Slurm can
    never start, each one clear line. Needs root (the daemons run as root); about two and a half minutes."""
    python = environment(session)
    sys.path.insert(0, str(ROOT / "tests"))
    from slurm_cluster import missing

    if missing():
        if not (shutil.which("apt-get") and os.geteuid() == 0):
            session.error(f"Slurm programs missing ({', '.join(missing())}): as root, "
                          f"apt-get install {' '.join(SLURM_PACKAGES)}")
        session.log(f"installing Debian's {', '.join(SLURM_PACKAGES)} (a single-node test cluster)")
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", *SLURM_PACKAGES, external=True,
                    env={"DEBIAN_FRONTEND": "noninteractive"})
    session.run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/integration/test_slurm_cluster.py",
                *session.posargs, external=True, env={"ACDC_BENCH_SLURM": "require"})


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site (MkDocs, Material theme, API reference by mkdocstrings) into
    build/site/, with ``--strict``: a broken link or a missing API page fails. ``-- serve`` serves it."""
    python = environment(session)
    command = session.posargs or ["build", "--strict"]
    session.run(python, "-m", "mkdocs", *command, external=True, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def reproduce(session: nox.Session) -> None:
    """Reproduce a suite end to end (default: fashion-mnist-10): runs, comparison, leaderboard, plots.

    Options after ``--`` go to ``acdc-bench reproduce`` (see ``acdc-bench reproduce --help``).
    """
    _cli(session, "reproduce", *session.posargs)


@nox.session
def verify(session: nox.Session) -> None:
    """Re-run seed 0 of every cell of the shipped default reproduction and hold each run to the
    shipped record (acdc_bench/records/<suite>.runs.csv, the committed leaderboards/<suite>.runs.csv):
    identical or different, run by run (``-- --all``: every recorded run)."""
    _cli(session, "verify", *session.posargs)


@nox.session
def compare(session: nox.Session) -> None:
    """Print and write the comparison table of a suite's finished runs."""
    _cli(session, "compare", *session.posargs)


@nox.session
def leaderboard(session: nox.Session) -> None:
    """Export leaderboards/<suite>.csv (+ Markdown) and the plots from a suite's runs."""
    _cli(session, "leaderboard", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Performance benchmarks (pytest-benchmark), then every method's step of the default suite
    under portable (sparse kernels against dense, paired) and native numerics and the layer table
    of both numerics (docs/performance.md); ``-- --short`` for the CI-sized pytest-benchmark run only."""
    python = environment(session)
    short = "--short" in session.posargs
    args = [a for a in session.posargs if a != "--short"]
    env = {"ACDC_BENCH_SHORT": "1"} if short else {}
    session.run(python, "-m", "pytest", "benchmarks", "--benchmark-enable", "--benchmark-only",
                "--benchmark-autosave", "--benchmark-columns=min,median,mean,rounds", *args,
                external=True, env=env)
    if short or args:
        return
    session.run(python, "benchmarks/profile_step.py", "--numerics", "portable", "--pair", "--steps", "150",
                external=True)
    session.run(python, "benchmarks/profile_step.py", "--numerics", "native", "--steps", "150", external=True)
    session.run(python, "benchmarks/sparse_kernels.py", "--threads", "1", "--densities", "0.1", "0.05", "0.02",
                "--layers", "lenet", "resnet50 fc", external=True)


@nox.session
def kernels(session: nox.Session) -> None:
    """Sparse kernels (dense-masked, CSR, sparseprop) per layer shape, and the default suite's whole
    compressed step with ``-- --whole-step``: benchmarks/sparse_kernels.py, the README's table."""
    python = environment(session)
    session.run(python, "benchmarks/sparse_kernels.py", *session.posargs, external=True)


@nox.session
def bench_gpu(session: nox.Session) -> None:
    """ResNet50 training throughput (images/s) per method on a GPU; ``-- --smoke`` on CPU."""
    python = environment(session)
    session.run(python, "benchmarks/gpu_bench.py", *session.posargs, external=True)
