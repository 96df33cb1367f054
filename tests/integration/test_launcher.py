"""``./nox``, the README's two commands, on a Python that is externally managed (PEP 668), as
Debian's, Ubuntu's and Homebrew's are: it reaches nox without installing anything into that Python,
with and without the venv module's ensurepip (Debian's python3-venv), and says what to install when
it cannot.

The externally managed Python is a copy of this interpreter's installation: its executable, its
standard library linked file by file, an ``EXTERNALLY-MANAGED`` file beside it, and site-packages of
its own. pip installs offline from a folder of wheels: ``nox`` there is a stand-in that prints how it
was started (the real one is on PyPI), ``pip`` the wheel this interpreter's ensurepip bundles."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.name != "posix" or shutil.which("sh") is None, reason="./nox is a POSIX shell script")]

VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
STDLIB = Path(sysconfig.get_paths()["stdlib"])  # the base installation's, also from inside a venv
EXECUTABLE = Path(sys.base_prefix) / "bin" / f"python{VERSION}"
STAND_IN = '''import json, sys
print("STAND-IN NOX " + json.dumps({"argv": sys.argv[1:], "prefix": sys.prefix, "base_prefix": sys.base_prefix}))
'''


def _wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel of ``files`` (path in the wheel: text), with its metadata and RECORD."""
    info = f"{name}-{version}.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def _bundled_pip() -> Path | None:
    """The pip wheel this interpreter's ensurepip installs (CPython's bundle, or Debian's python-wheels)."""
    for folder in (STDLIB / "ensurepip" / "_bundled", Path("/usr/share/python-wheels")):
        found = sorted(folder.glob("pip-*.whl"))
        if found:
            return found[-1]
    return None


def _managed_python(root: Path, *, ensurepip: bool, pip: bool, nox: bool = False) -> tuple[Path, list[Path]]:
    """An externally managed copy of this Python under ``root``: (its bin folder, its site dirs)."""
    if not EXECUTABLE.is_file():
        pytest.skip(f"no interpreter executable at {EXECUTABLE}")
    (root / "bin").mkdir(parents=True)
    shutil.copy2(EXECUTABLE, root / "bin" / f"python{VERSION}")
    (root / "bin" / "python3").symlink_to(f"python{VERSION}")
    for library in (Path(sys.base_prefix) / "lib").glob("libpython*"):  # a --enable-shared build
        (root / "lib").mkdir(exist_ok=True)
        (root / "lib" / library.name).symlink_to(library)
    stdlib = root / "lib" / f"python{VERSION}"
    stdlib.mkdir(parents=True)
    skipped = {"site-packages", "dist-packages", "EXTERNALLY-MANAGED"} | (set() if ensurepip else {"ensurepip"})
    for entry in STDLIB.iterdir():
        if entry.name not in skipped:
            (stdlib / entry.name).symlink_to(entry)
    (stdlib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=this Python is managed by the test\n")
    python = root / "bin" / "python3"
    asked = subprocess.run([str(python), "-c", "import json, site, sys; print(json.dumps([sys.prefix, site.getsitepackages()]))"],
                           capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert asked.returncode == 0, asked.stderr
    prefix, site_dirs = json.loads(asked.stdout)
    assert Path(prefix) == root, f"the copy's prefix is {prefix}, not {root}"
    site_dirs = [Path(d) for d in site_dirs]
    site_dirs[0].mkdir(parents=True, exist_ok=True)
    if pip:
        spec = importlib.util.find_spec("pip")
        assert spec and spec.origin, "the tests' environment has pip"
        (site_dirs[0] / "pip").symlink_to(Path(spec.origin).parent)
    if nox:
        (site_dirs[0] / "nox").mkdir()
        (site_dirs[0] / "nox" / "__init__.py").write_text("")
        (site_dirs[0] / "nox" / "__main__.py").write_text(STAND_IN)
    return root / "bin", site_dirs


def _contents(site_dirs: list[Path]) -> dict[str, list[str]]:
    return {str(d): sorted(p.name for p in d.iterdir()) if d.is_dir() else [] for d in site_dirs}


def _launch(tmp_path: Path, bin_dir: Path, wheels: Path, *args: str) -> subprocess.CompletedProcess:
    """``./nox ARGS`` as a user would type it: python3 on PATH is the managed copy, a fresh HOME,
    pip offline on ``wheels`` and blind to this machine's pip configuration."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_CONFIG_FILE": os.devnull,
           "PIP_NO_CACHE_DIR": "1"}
    return subprocess.run([str(ROOT / "nox"), *args], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)


def _stand_in(ran: subprocess.CompletedProcess) -> dict:
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = [line for line in ran.stdout.splitlines() if line.startswith("STAND-IN NOX ")]
    assert len(lines) == 1, ran.stdout + ran.stderr
    return json.loads(lines[0].removeprefix("STAND-IN NOX "))


@pytest.fixture
def wheels(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    _wheel(folder, "nox", "2024.4.15", {"nox/__init__.py": "", "nox/__main__.py": STAND_IN})
    return folder


def test_with_ensurepip_a_tool_environment_gets_nox_and_the_system_is_untouched(tmp_path, wheels):
    """Ubuntu 24.04 or Debian 12 with python3-venv (and Homebrew's Python): no pip in the system."""
    bin_dir, site_dirs = _managed_python(tmp_path / "system", ensurepip=True, pip=False)
    before = _contents(site_dirs)
    ran = _stand_in(_launch(tmp_path, bin_dir, wheels, "-s", "reproduce"))
    tool = tmp_path / "home" / ".local" / "share" / "acdc-bench" / f"nox-python{VERSION}"
    assert ran["argv"] == ["-s", "reproduce"]
    assert Path(ran["prefix"]) == tool and Path(ran["base_prefix"]) == tmp_path / "system"
    assert _contents(site_dirs) == before
    # the second time it runs the same nox and installs nothing: no wheel is left to install from
    for wheel in wheels.iterdir():
        wheel.unlink()
    again = _stand_in(_launch(tmp_path, bin_dir, wheels, "--list"))
    assert again["argv"] == ["--list"] and Path(again["prefix"]) == tool


def test_without_ensurepip_the_pythons_own_pip_fills_the_tool_environment(tmp_path, wheels):
    """Debian 12 or Ubuntu 24.04 with python3-pip but without python3-venv: `python3 -m venv` fails."""
    bundled = _bundled_pip()
    if bundled is None:
        pytest.skip("this interpreter bundles no pip wheel to install offline")
    shutil.copy2(bundled, wheels)
    bin_dir, site_dirs = _managed_python(tmp_path / "system", ensurepip=False, pip=True)
    failed = subprocess.run([str(bin_dir / "python3"), "-m", "venv", str(tmp_path / "plain")], capture_output=True)
    assert failed.returncode != 0, "the copy's venv must lack ensurepip"
    before = _contents(site_dirs)
    ran = _stand_in(_launch(tmp_path, bin_dir, wheels, "--version"))
    tool = tmp_path / "home" / ".local" / "share" / "acdc-bench" / f"nox-python{VERSION}"
    assert ran["argv"] == ["--version"] and Path(ran["prefix"]) == tool
    assert _contents(site_dirs) == before
    # the tool environment has pip of its own: the noxfile makes the project's .venv with it
    has_pip = subprocess.run([str(tool / "bin" / "python"), "-m", "pip", "--version"], capture_output=True, text=True)
    assert has_pip.returncode == 0 and str(tool) in has_pip.stdout, has_pip.stdout + has_pip.stderr


def test_without_ensurepip_or_pip_one_line_names_the_fix(tmp_path, wheels):
    """Stock Ubuntu: python3 without python3-venv and without python3-pip."""
    bin_dir, site_dirs = _managed_python(tmp_path / "system", ensurepip=False, pip=False)
    ran = _launch(tmp_path, bin_dir, wheels, "-s", "tests")
    assert ran.returncode == 1
    lines = ran.stderr.strip().splitlines()
    assert lines[-1].startswith("./nox: ") and "apt install python3-venv" in lines[-1] and "PYTHON" in lines[-1]
    assert not (tmp_path / "home" / ".local" / "share" / "acdc-bench" / f"nox-python{VERSION}").exists()


def test_a_python_that_has_nox_runs_it_and_makes_nothing(tmp_path, wheels):
    bin_dir, _ = _managed_python(tmp_path / "system", ensurepip=True, pip=False, nox=True)
    ran = _stand_in(_launch(tmp_path, bin_dir, wheels, "-s", "tests", "--", "-k", "docs"))
    assert ran["argv"] == ["-s", "tests", "--", "-k", "docs"] and Path(ran["prefix"]) == tmp_path / "system"
    assert not (tmp_path / "home" / ".local").exists()

