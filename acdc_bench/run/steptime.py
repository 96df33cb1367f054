"""The dense training step of a suite, timed as its runs train it: the FLOP rate behind "FLOP-ideal".

A reproduction's table of wall time against FLOP-ideal time needs the machine's dense FLOP rate.
The dense runs of the same invocation give one, but they share the cores with whatever runs
beside them, so the rate (and every ratio) moves with the neighbours: two idle reproductions of
the same suite on one machine timed their dense runs 40% apart. This module measures the rate
once per invocation, before any run starts: the suite's dense run is built as a run builds it
(:func:`acdc_bench.run.loop.build_run`: model, numerics' products, optimizer, data), on the
threads a run gets, and :data:`STEPS` of its training steps (after :data:`WARMUP`) are timed one
by one through :func:`acdc_bench.run.loop.train_step`. The rate is that of the fastest block of
:data:`BLOCK` consecutive steps (its median step): a shared or virtual machine has slow spells of
a second or more (measured on a 2-core AMD EPYC VM: one invocation's blocks 6.3 ms, then 8.4-8.7
ms for five blocks, then 6.2 ms again), and the fastest block is what the machine does without
one. It leaves out what a run does besides training steps (evaluation, checkpoints) and the
slow spells the runs meet, so a dense run's own ratio is above 1, and says how much.

Why 1500 steps: the fastest block of a longer timing moves less between invocations. On that
VM, six invocations each (LeNet-300-100, portable numerics, one thread, 2026-12-07, `python -c
"...dense_step(load_suite('fashion-mnist-10'), steps=N)"`): 300 steps gave 4.90-6.20 ms (the
largest 27% above the smallest; two of the three triples spread more than 10%), 1500 steps
4.80-5.34 ms (11%; each triple within 7%), for about 8 s instead of 2 s once per output folder.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from acdc_bench.config import Suite

WARMUP = 30
STEPS = 1500
BLOCK = 30
#: At most this long (s) for the timed steps (a large model's step on a CPU takes seconds): fewer
#: steps, in blocks of a tenth of them; the warm-up likewise stops after a tenth of it.
SECONDS = 12.0
#: A dense step of more training FLOPs than this (about a third of a second on one CPU core) is not
#: timed: the paper suites' models on a CPU take seconds a step, and the table then takes the dense
#: runs' own rate (:func:`dense_step` returns None).
MAX_STEP_FLOPS = 2e10


def dense_step(suite: Suite, data_root: str | None = None, *, steps: int = STEPS, warmup: int = WARMUP,
               block: int = BLOCK, seconds: float = SECONDS) -> dict | None:
    """``{"seconds": the fastest block's median step, "median": the median step, "flops": training
    FLOPs of one step, "rate": FLOPs/s, "steps", "threads"}`` of ``suite``'s dense step on this
    machine, one thread under portable numerics; None for a step above :data:`MAX_STEP_FLOPS`."""
    from acdc_bench.config import run_config
    from acdc_bench.run.launch import one_thread_per_run
    from acdc_bench.run.loop import build_run, train_step

    config = run_config(suite, "dense", 0.0, epochs=1)
    threads = torch.get_num_threads()
    rng = torch.random.get_rng_state()
    if one_thread_per_run(suite.numerics):
        torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="acdc-dense-step-") as scratch:
            run = build_run(config, Path(scratch), data_root, rank=0, world_size=1, local_rank=0)
        if 3 * run.sparsifier.method.flops.dense_forward * run.data.batch_size > MAX_STEP_FLOPS:
            return None
        run.train_model.train()
        times, flops = [], []
        batches = iter(run.data.train_batches(0))
        began, warmed = time.perf_counter(), 0
        while len(times) < steps:
            spent = time.perf_counter() - began
            if times and spent > seconds * 1.1:
                break
            # the warm-up: its steps, or a tenth of the time, whichever ends first (at least one step)
            warming = warmed < warmup and (warmed == 0 or spent <= seconds / 10)
            try:
                inputs, targets = next(batches)
            except StopIteration:
                batches = iter(run.data.train_batches(0))
                inputs, targets = next(batches)
            before = run.sparsifier.training_flops
            started = time.perf_counter()
            train_step(run.train_model, run.sparsifier, run.optimizer, run.scaler, run.criterion, inputs, targets,
                       int(targets.shape[0]), run.amp_dtype, run.channels_last)
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)
            if warming:
                warmed += 1
            else:
                times.append(time.perf_counter() - started)
                flops.append(run.sparsifier.training_flops - before)
        block = min(block, max(1, len(times) // 10))
        fastest = min(statistics.median(times[start:start + block]) for start in range(0, len(times), block))
        per_step = statistics.median(flops)
        return {"seconds": fastest, "median": statistics.median(times), "flops": per_step, "rate": per_step / fastest,
                "steps": len(times), "threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng)
