"""benchmarks/compile_steps.py runs end to end (8 paired rounds on small shapes, the aot_eager backend:
the script, not inductor's compile time, is what this smoke run checks)."""

import subprocess
import sys
from pathlib import Path


def test_compile_steps_runs_and_prints_both_models():
    script = Path(__file__).with_name("compile_steps.py")
    ran = subprocess.run([sys.executable, str(script), "--short", "--backend", "aot_eager"], capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "| lenet-300-100, batch 256 |" in ran.stdout and "| bert 4x256" in ran.stdout
