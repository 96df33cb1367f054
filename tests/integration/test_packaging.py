"""The library as a user installs it: ``python -m build`` makes a wheel and an sdist without
warnings; the wheel holds the suites, the published reference rows, the shipped run records, the
sparse kernels' C source and LICENSE; installed (not editable) into a fresh environment, its
``acdc-bench`` runs from a folder outside the checkout and imports the installed package, not the
checkout.

The build runs without build isolation (``--no-isolation``), with the build and setuptools of the
tests' environment (the ``test`` extra), so that it needs no network; ``build`` still checks that they
satisfy ``build-system.requires``. The fresh environment sees the tests' environment's packages
through a ``.pth`` file (torch is not installed twice), after its own site-packages."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT, needs_fashion

pytestmark = pytest.mark.slow


def _run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    ran = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kwargs)
    assert ran.returncode == 0, f"{argv}:\n{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
    return ran


def _source_copy(into: Path) -> Path:
    """The files of the checkout that git would commit (tracked, or new and not ignored), copied: the
    build never writes into the checkout, and nothing ignored (runs/, .venv/) slips into the sdist."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """(wheel, sdist, build log) of the checkout."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = _source_copy(tmp / "source")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # its notice is no warning
    ran = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp / "dist", source], env=env)
    wheels, sdists = sorted((tmp / "dist").glob("*.whl")), sorted((tmp / "dist").glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted((tmp / "dist").iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0], "log": ran.stdout + ran.stderr, "tmp": tmp}


@pytest.fixture(scope="module")
def installed(built) -> Path:
    """A fresh environment with the wheel installed (``--no-deps``: its dependencies come from the tests'
    environment through a ``.pth`` file); returns its bin folder."""
    env_dir = built["tmp"] / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir])
    python = env_dir / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    ours = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site / "tests-environment.pth").write_text("".join(f"{path}\n" for path in ours))
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", built["wheel"]],
         env=dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    return env_dir / "bin"


def _outside(tmp: Path) -> dict:
    """A folder outside the checkout to run in, and an environment that points nowhere into it."""
    folder = tmp / "elsewhere"
    folder.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    return {"cwd": folder, "env": dict(env, OMP_NUM_THREADS="1", WANDB_MODE="disabled")}


def test_the_build_is_clean_and_ships_the_data_and_the_licence(built):
    assert not re.findall(r"(?i).*warning.*", built["log"]), re.findall(r"(?i).*warning.*", built["log"])
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = set(wheel.namelist())
    suites = {f"acdc_bench/suites/{p.name}" for p in (ROOT / "acdc_bench" / "suites").glob("*.yaml")}
    reference = {f"acdc_bench/reference/{p.name}" for p in (ROOT / "leaderboards" / "reference").glob("*.csv")}
    records = {f"acdc_bench/records/{p.name}" for p in (ROOT / "acdc_bench" / "records").glob("*.runs.csv")}
    assert suites and reference and records
    assert suites | reference | records <= names, sorted((suites | reference | records) - names)
    assert any(re.fullmatch(r"acdc_bench-[^/]+\.dist-info/licenses/LICENSE", n) for n in names), sorted(names)
    assert "acdc_bench/baselines/__init__.py" in names
    assert "acdc_bench/core/sparse_linear.c" in names  # compiled at first use (acdc_bench.core.sparse)
    with tarfile.open(built["sdist"]) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        assert f"{top}/LICENSE" in sdist.getnames()
        assert sdist.extractfile(f"{top}/LICENSE").read() == (ROOT / "LICENSE").read_bytes()


def test_the_installed_wheel_runs_from_outside_the_checkout(built, installed):
    place = _outside(built["tmp"])
    probe = ("import acdc_bench, acdc_bench.config as config\n"
             "from importlib import resources\n"
             "from acdc_bench.report.results import DEFAULT_REFERENCE_PATH, load_reference\n"
             "records = resources.files('acdc_bench').joinpath('records')\n"
             "print(acdc_bench.__file__, config.SUITES_DIR, DEFAULT_REFERENCE_PATH, records)\n"
             "print(len(load_reference()))\n"
             "import acdc_bench.methods as methods; assert methods.get_method('set').__module__ == "
             "'acdc_bench.baselines.set'\n"
             "print(' '.join(sorted(p.name for p in records.iterdir())))")
    paths, rows, records = _run([installed / "python", "-c", probe], **place).stdout.splitlines()
    for path in paths.split():
        assert Path(path).is_relative_to(installed.parent), f"{path} is not the installed package's"
        assert not Path(path).resolve().is_relative_to(ROOT), f"{path} is the checkout's"
    with open(ROOT / "leaderboards" / "reference" / "published.csv", newline="") as published:
        assert int(rows) == len(list(csv.DictReader(published)))  # every published row, read from the wheel
    assert records.split() == sorted(p.name for p in (ROOT / "acdc_bench" / "records").glob("*.runs.csv"))
    dry = _run([installed / "acdc-bench", "reproduce", "--dry-run"], **place).stdout
    assert re.search(r"^suite fashion-mnist-10: \d+ planned runs", dry, re.M), dry[:2000]
    assert "nothing trained" in dry
    assert not (place["cwd"] / "runs").exists()


@needs_fashion
def test_the_readmes_smoke_run_runs_from_the_installed_wheel(built, installed):
    readme = (ROOT / "README.md").read_text()
    smoke = re.search(r"^acdc-bench run --method gmp [^\n]*$", readme, re.M)
    assert smoke, "the README's smoke run"
    place = _outside(built["tmp"])
    _run([installed / "acdc-bench", *smoke.group(0).split()[1:], "--no-progress"], **place)
    results = list((place["cwd"] / "runs").rglob("result.json"))
    assert len(results) == 1, results
