"""Portable numerics: the same command gives bit-identical results on Intel and AMD x86-64 CPUs with AVX2.

Float rounding on a CPU follows the instructions the math libraries pick at start-up: ATen's
vectorised kernels (AVX2 or AVX-512), MKL's BLAS (per CPU vendor and generation, and AMX on
recent Xeons) and oneDNN's convolutions. Two CPU types therefore train two different models
from one seed, and accuracies move by tenths of a point, the size of the gaps between methods.
Under ``numerics: portable`` (the default of every suite) each library is pinned before torch and
numpy start, through the environment variables that they read once, at start-up:

- ``ATEN_CPU_CAPABILITY=avx2``: ATen's own kernels (reductions, softmax, elementwise);
- ``OPENBLAS_CORETYPE=Haswell OPENBLAS_NUM_THREADS=1``: the matrix products of linear layers run
  on the OpenBLAS of numpy's PyPI wheels, on its AVX2/FMA kernels with one blocking and one thread,
  the same on Intel and AMD CPUs (:mod:`acdc_bench.core.blas`). torch's own products run on MKL,
  whose one vendor-independent path is ~2.5x slower;
- ``MKL_CBWR=COMPATIBLE``: every product left on MKL (none in the CPU suites' models) on MKL's one
  code path for Intel and non-Intel CPUs alike (SSE2). Every other branch (``AVX2`` among them) is
  for Intel CPUs only: on an AMD CPU MKL silently runs its ``AUTO`` branch instead (oneMKL
  developer guide, "Specifying Code Branches");
- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN's convolutions and matrix products.

sparseprop's kernels are compiled with ``-march=native``, so they stay off under portable
numerics; ``kernels: auto`` runs the fixed-order kernels of :mod:`acdc_bench.core.sparse` instead.

``numerics: native`` leaves the libraries free to use whatever the CPU has: faster where AVX-512
or AMX pays, reproducible on that CPU type only. A run records its mode, CPU, instruction set,
threads and library versions (:func:`describe`); the mode is part of its run id. On a GPU,
``portable`` turns on deterministic algorithms (repeatable on one GPU model; see
:func:`configure_device`).

This module imports torch only inside functions, so that the command line can pin the
environment before torch initialises (:func:`ensure`).
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from pathlib import Path

MODES = ("portable", "native")
#: The default mode of a suite that does not say, unless ``ACDC_BENCH_NUMERICS`` names another.
DEFAULT = "portable"
ENV_DEFAULT = "ACDC_BENCH_NUMERICS"
#: What each library reads at start-up to compute the same on every x86-64 CPU (see the module docstring).
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2",
                "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "1"}
#: What a run id says of portable numerics: the libraries and kernels that fix its bits (a run made
#: under other pins has another id, so it is never resumed or reused under these).
PORTABLE_ID = "portable: ATen avx2, linear products on OpenBLAS Haswell 1 thread"
#: What numpy's build information calls the OpenBLAS of its PyPI wheels (the portable products' library).
OPENBLAS = "scipy-openblas"
#: torch.compile's (inductor's) code cache. Its keys do not include ATen's capability, so a kernel
#: compiled for AVX-512 by a native process and reused under ``ATEN_CPU_CAPABILITY=avx2`` computes
#: wrong numbers (measured: a LeNet-300-100 gradient 12.1 where eager gives 0.025). Portable
#: processes keep a cache of their own, unless the user named one.
INDUCTOR_CACHE = "TORCHINDUCTOR_CACHE_DIR"
#: Its folder in the temporary directory, per user (a Slurm job script fills ``{user}`` with ``${USER}``).
INDUCTOR_CACHE_NAME = "torchinductor_{user}_aten-avx2"


def pinned_environment(environ=None) -> dict:
    """The variables that pin portable numerics in a process about to start: :data:`PORTABLE_ENV`
    and, unless set already, an inductor cache of its own (:data:`INDUCTOR_CACHE`)."""
    import getpass
    import tempfile

    environ = os.environ if environ is None else environ
    pinned = dict(PORTABLE_ENV)
    if not environ.get(INDUCTOR_CACHE):
        pinned[INDUCTOR_CACHE] = str(Path(tempfile.gettempdir()) / INDUCTOR_CACHE_NAME.format(user=getpass.getuser()))
    return pinned


#: Set once the command line has re-executed itself to pin the environment (never loops).
_REEXEC_MARK = "ACDC_BENCH_NUMERICS_REEXEC"


class NumericsError(ValueError):
    """The process runs under other numerics than the run asks for; the message says how to fix it."""


def default_mode() -> str:
    """The mode of a suite that does not set ``numerics``: ``$ACDC_BENCH_NUMERICS`` or portable."""
    mode = os.environ.get(ENV_DEFAULT) or DEFAULT
    if mode not in MODES:
        raise NumericsError(f"{ENV_DEFAULT}={mode!r} is unknown; allowed: {', '.join(MODES)}")
    return mode


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise NumericsError(f"numerics {mode!r} is unknown; allowed: {', '.join(MODES)} "
                            f"(portable: identical results on Intel and AMD x86-64 CPUs with AVX2; native: the CPU's own "
                            f"instruction set, reproducible on that CPU type only)")
    return mode


def environment_pinned(environ=None) -> bool:
    """Whether ``environ`` (default: this process's) pins every library (:data:`PORTABLE_ENV`)."""
    environ = os.environ if environ is None else environ
    return all(environ.get(key) == value for key, value in PORTABLE_ENV.items())


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def active() -> str:
    """The mode this process's math libraries run under. Portable needs the pinned environment
    and, once torch or numpy is imported, ATen on AVX2 (a CPU without AVX2 cannot run portable
    numerics) and numpy's OpenBLAS on the pinned core type and thread count. On a CPU other than
    x86 there is nothing to cap: the CPU's own rounding is the only one."""
    if not _x86():
        return "native"
    if not environment_pinned():
        return "native"
    torch = sys.modules.get("torch")
    if torch is not None and torch.backends.cpu.get_cpu_capability() != "AVX2":
        return "native"
    if "numpy" in sys.modules and openblas_problem() is not None:
        return "native"
    return "portable"


def ensure(mode: str, *, reexec: bool = False) -> None:
    """Make this process run under ``mode``.

    Before torch or numpy is imported, portable numerics are pinned by setting the environment (inherited
    by every process this one starts: parallel jobs, torchrun workers, submitit jobs). Once torch
    or numpy has started, its libraries cannot change: with ``reexec`` (the command line) the process
    starts again with the environment pinned; otherwise it is an error that says what to do.
    ``native`` accepts any environment: it is the libraries' own choice.
    """
    check_mode(mode)
    if mode == "native" or not _x86() or active() == "portable":
        return
    if "torch" not in sys.modules and "numpy" not in sys.modules:
        os.environ.update(pinned_environment())
        if (problem := openblas_problem()) is not None:
            raise _cannot_run(problem)
        return
    if reexec and not os.environ.get(_REEXEC_MARK):
        environ = dict(os.environ, **pinned_environment(), **{_REEXEC_MARK: "1"})
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
    if environment_pinned() and (problem := openblas_problem()) is not None:
        raise _cannot_run(problem)
    raise NumericsError(
        "this run asks for portable numerics, but torch or numpy started in this process without them "
        f"(ATen on {_capability()}, environment {_pinned_text()}). Set "
        + " ".join(f"{k}={v}" for k, v in PORTABLE_ENV.items())
        + " before Python starts (or before `import numpy` and `import torch`), or choose native numerics "
          "(`--numerics native`, suite key `numerics: native`, or ACDC_BENCH_NUMERICS=native).")


def _cannot_run(problem: str) -> NumericsError:
    return NumericsError(f"portable numerics cannot run here: {problem}; or choose native numerics "
                         "(`--numerics native`, suite key `numerics: native`, or ACDC_BENCH_NUMERICS=native).")


def _capability() -> str:
    torch = sys.modules.get("torch")
    return torch.backends.cpu.get_cpu_capability() if torch is not None else "not started"


def _pinned_text() -> str:
    return ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in PORTABLE_ENV)


def cpu_model() -> str:
    """The CPU's name, family and model (/proc/cpuinfo), or what the platform says."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']} model {fields.get('model', '?')})"
    return name


def describe(mode: str) -> dict:
    """What a run's numbers depend on besides its config: the mode, the CPU, the instruction set
    each library runs, the thread count and the library versions (``config.yaml``, ``result.json``)."""
    import torch

    build = torch.__config__.show()
    info = {
        "mode": mode,
        "active": active(),
        "cpu": cpu_model(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "environment": {key: os.environ.get(key) for key in PORTABLE_ENV},
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "mkl": _first_line(build, "Math Kernel Library"),
        "blas": openblas(),
        "onednn": _first_line(build, "MKL-DNN"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
    return info


@functools.lru_cache(maxsize=1)
def _openblas_library():
    """(numpy's loaded OpenBLAS, its symbol suffix, numpy's BLAS build record); imports numpy."""
    import ctypes
    import glob

    import numpy

    try:
        blas = dict(numpy.show_config(mode="dicts")["Build Dependencies"]["blas"])
    except (KeyError, TypeError):
        blas = {}
    root = Path(numpy.__file__).parent
    # Linux wheels keep it in numpy.libs beside the package, macOS wheels in numpy/.dylibs.
    for path in sorted(glob.glob(str(root.parent / "numpy.libs" / "libscipy_openblas*"))
                       + glob.glob(str(root / ".dylibs" / "libscipy_openblas*"))):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for suffix in ("64_", ""):
            if hasattr(library, f"scipy_openblas_get_corename{suffix}"):
                return library, suffix, blas
    return None, "", blas


def openblas() -> dict:
    """numpy's BLAS as this process runs it: numpy's version, the library, its version, and for
    numpy's OpenBLAS the core type and thread count it started with (imports numpy)."""
    import ctypes

    import numpy

    library, suffix, blas = _openblas_library()
    found = {"numpy": numpy.__version__, "library": blas.get("name"), "version": blas.get("version")}
    if library is not None:
        corename = getattr(library, f"scipy_openblas_get_corename{suffix}")
        corename.restype = ctypes.c_char_p
        found["core"] = corename().decode()
        found["threads"] = int(getattr(library, f"scipy_openblas_get_num_threads{suffix}")())
    return found


def openblas_problem() -> str | None:
    """Why this process cannot compute portable products (None when it can; imports numpy)."""
    found = openblas()
    if found.get("library") != OPENBLAS or "core" not in found:
        return (f"numpy {found['numpy']} runs on {found.get('library') or 'an unknown BLAS'}, not on the OpenBLAS of "
                f"numpy's PyPI wheels ({OPENBLAS}); install numpy from PyPI (`pip install --force-reinstall numpy`)")
    core, threads = PORTABLE_ENV["OPENBLAS_CORETYPE"], int(PORTABLE_ENV["OPENBLAS_NUM_THREADS"])
    if found["core"].lower() != core.lower() or found["threads"] != threads:
        return (f"numpy's OpenBLAS started on core type {found['core']} with {found['threads']} thread(s), not {core} "
                f"with {threads}; set OPENBLAS_CORETYPE={core} OPENBLAS_NUM_THREADS={threads} before Python starts "
                "(before numpy is imported)")
    return None


def _first_line(text: str, needle: str) -> str | None:
    for line in text.splitlines():
        if needle in line:
            return line.strip(" -")
    return None


def configure_device(mode: str, device) -> None:
    """GPU runs under portable numerics: deterministic algorithms (repeatable on one GPU model;
    cuBLAS needs its workspace setting before the first product)."""
    if mode != "portable" or getattr(device, "type", "cpu") != "cuda":
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
