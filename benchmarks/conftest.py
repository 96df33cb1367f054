"""Session plumbing of the benchmarks: the ratio table printed at the end and saved as JSON.

Each benchmark stores its figures in :data:`_harness.RESULTS`; at the end of the session
the ratios against the plain dense PyTorch step (measured in the same session) are put
into every benchmark's ``extra_info`` (so ``pytest-benchmark compare`` shows them in the
saved runs), written to ``.benchmarks/ratios.json`` and printed as a Markdown table.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# OpenMP threads that spin while they wait (libgomp's default) stall for whole scheduler
# time slices when other processes share the cores: a 4 ms LeNet step then takes 190 ms
# and every ratio is noise. Waiting threads that sleep instead keep the figures steady
# on a shared machine. It must be set before torch loads libgomp; an explicit setting wins.
_OMP_WAIT_POLICY_WAS_SET = "OMP_WAIT_POLICY" in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_TORCH_LOADED_EARLY = "torch" in sys.modules

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness  # noqa: E402

RERUN = "nox -s bench" + (" -- --short" if _harness.SHORT else "")
_ROWS: list[dict] | None = None


def _rows() -> list[dict]:
    global _ROWS
    if _ROWS is None:
        _ROWS = _harness.summary_rows()
    return _ROWS


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """Benchmarks disabled (the project's pytest default): each runs once, as a smoke test, on
    the short workloads."""
    session = getattr(config, "_benchmarksession", None)
    if session is not None and session.disabled and not _harness.SHORT:
        _harness.use_short_workloads()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """Before pytest-benchmark saves its JSON: fill in the ratios, write ``.benchmarks/ratios.json``."""
    if not _harness.RESULTS:
        return
    rows = _rows()
    out = Path(session.config.rootpath) / ".benchmarks" / "ratios.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": _harness.machine(),
        "short": _harness.SHORT,
        "command": RERUN,
        "workloads": {k: w.label for k, w in _harness.WORKLOADS.items()},
        "rows": rows,
        "markdown": _harness.markdown_table(rows),
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, out)


def pytest_terminal_summary(terminalreporter):
    if not _harness.RESULTS:
        return
    rows = _rows()
    info = _harness.machine()
    tr = terminalreporter
    tr.section("acdc_bench: ratios against the plain dense PyTorch step")
    tr.write_line(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
                  f"({info['torch_threads']} threads, OMP_WAIT_POLICY={info['omp_wait_policy']})"
                  f"{', ' + info['cuda'] if info['cuda'] else ''}"
                  f"{'; SHORT mode (ResNet50 shrunk: not the issue targets)' if _harness.SHORT else ''}")
    if _TORCH_LOADED_EARLY and not _OMP_WAIT_POLICY_WAS_SET:
        tr.write_line("warning: torch was loaded before benchmarks/conftest.py could set OMP_WAIT_POLICY=PASSIVE; "
                      "on a shared machine set it in the environment")
    tr.write_line("")
    for line in _harness.markdown_table(rows).splitlines():
        tr.write_line(line)
    tr.write_line("")
    tr.write_line("step ratio: median over rounds of (method step / mean of the plain dense steps timed just before "
                  "and after it, same architecture and batch); ratio of minima: min method step / min torch-dense benchmark step; "
                  "harness: median time per step in the method's hooks and the FLOP meter / median dense step; "
                  "FLOP meter: min time of meter.add(method.step_training_flops(step), batch) / dense step (and its "
                  "median inside the timed steps, where caches are cold after the optimizer step).")
    tr.write_line(f"saved: .benchmarks/ratios.json; re-measure: {RERUN}")
