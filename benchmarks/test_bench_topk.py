"""Mask computation: global magnitude top-k over all ResNet50 prunable weights (25.5M).

The floor for an exact threshold is one ``torch.kthvalue`` over the same concatenated
magnitudes (already concatenated: the floor is not charged for building them). The
global top-k is timed end to end: magnitudes, threshold, ties, masks. Peak memory of
both is measured in a fresh process (``_peak_memory.py``), in full-size fp32 buffers
beyond the inputs and the masks returned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _harness import SHORT, SPARSITY, record
from acdc_bench.models import build_model
from acdc_bench.core.sparsity import global_magnitude_masks, prunable_layers

ROUNDS = 1 if SHORT else 5
WARMUP = 0 if SHORT else 1
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return [layer.weight.detach() for layer in prunable_layers(build_model("resnet50"))]


def peak_memory(what: str) -> dict | None:
    """``_peak_memory.py`` in a fresh process; None where it cannot measure (not Linux) and in the short
    mode (the bound itself is tests/unit/core/test_topk_memory.py's)."""
    if SHORT or not os.path.exists("/proc/self/clear_refs"):
        return None
    path = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=path)
    done = subprocess.run([sys.executable, str(HERE / "_peak_memory.py"), what, str(SPARSITY)],
                          capture_output=True, text=True, env=env, cwd=HERE.parent, timeout=600)
    if done.returncode:
        pytest.fail(f"_peak_memory.py {what} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_topk_kthvalue(benchmark, weights):
    scores = torch.cat([w.abs().flatten() for w in weights])
    k = int(round(SPARSITY * scores.numel()))
    benchmark.group = "mask computation: ResNet50 global top-k"
    benchmark.pedantic(torch.kthvalue, args=(scores, k), rounds=ROUNDS, warmup_rounds=WARMUP)
    memory = peak_memory("kthvalue")
    values = {"elements": scores.numel()}
    if memory:
        values["extra_fp32_buffers"] = memory["extra_fp32_buffers"]
        benchmark.extra_info.update(memory)
    record(benchmark, "topk", "resnet50", "kthvalue", **values)


def test_topk_global_masks(benchmark, weights):
    n = sum(w.numel() for w in weights)
    benchmark.group = "mask computation: ResNet50 global top-k"
    masks = benchmark.pedantic(global_magnitude_masks, args=(weights, SPARSITY), rounds=ROUNDS, warmup_rounds=WARMUP)
    assert sum(int(m.sum()) for m in masks) == n - int(round(SPARSITY * n))
    memory = peak_memory("global")
    values = {"elements": n}
    if memory:
        values["extra_fp32_buffers"] = memory["extra_fp32_buffers"]
        values["full_size_fp32_buffers"] = memory["full_size_fp32_buffers"]
        benchmark.extra_info.update(memory)
        assert memory["full_size_fp32_buffers"] <= 1, memory
    record(benchmark, "topk", "resnet50", "global", **values)
