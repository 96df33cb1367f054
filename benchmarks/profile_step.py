"""Where a method's training step spends its time: ms per step and torch.profiler's operator table.

    python benchmarks/profile_step.py [--suite fashion-mnist-10] [--threads 1] [--steps 100]
                                      [--profile] [--kernels auto|dense] [CASE ...]

Cases (default: all): dense, acdc-sparse (a compressed epoch), acdc-dense (a decompressed one),
rigl (its masks as set up; an update step every dT), str (from its start). Each builds the run exactly as
``acdc-bench run`` does (``acdc_bench.run.loop.build_run``, the suite's matched configuration),
positions the method at the chosen epoch's start (AC/DC: that epoch's phase change run), then times ``train_step`` on that epoch's
batches. A diagnostic, not a benchmark: compare cases within one invocation (the paired ratios
are ``nox -s bench``'s).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

#: case: (method, sparsity, the epoch whose steps are timed as a fraction of the run; None: AC/DC's
#: first epoch of that phase after the warm-up).
CASES = {
    "dense": ("dense", 0.0, 0.5),
    "acdc-sparse": ("acdc", 0.95, None),
    "acdc-dense": ("acdc", 0.95, None),
    "rigl": ("rigl", 0.95, 0.5),
    "str": ("str", 0.95, 0.5),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", choices=[[], *CASES], default=[])
    parser.add_argument("--suite", default="fashion-mnist-10")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--kernels", default="auto", choices=["auto", "dense"])
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's table (100 steps)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(args.threads)
    from acdc_bench import config as suites
    from acdc_bench.run import loop

    suite = suites.load_suite(args.suite)
    for name in args.cases or list(CASES):
        method, sparsity, fraction = CASES[name]
        config = dict(suites.run_config(suite, method, sparsity, seed=0, budget={"mode": "paper"}),
                      kernels=args.kernels)
        run = loop.build_run(config, Path(tempfile.mkdtemp()), None, 0, 1, 0)
        sparsifier, per_epoch = run.sparsifier, run.data.steps_per_epoch
        if fraction is None:  # AC/DC: the first epoch of the wanted phase after the warm-up
            wanted = name.split("-")[1]
            epoch = next(e for e in range(1, run.epochs)
                         if sparsifier.method.phase(e) == wanted and sparsifier.method.phase(e - 1) != wanted)
        else:
            epoch = int(fraction * run.epochs)
        sparsifier.seek(epoch * per_epoch)
        if fraction is None:
            sparsifier.method.on_epoch_start(epoch)  # AC/DC's phase change: prune, or masks to ones
        run.train_model.train()
        batches = list(run.data.train_batches(epoch))
        if 20 + args.steps + (100 if args.profile else 0) >= per_epoch:
            parser.error(f"--steps {args.steps}: the timed steps must stay inside one epoch of {per_epoch} steps")

        def steps(n: int) -> None:
            for i in range(n):
                inputs, targets = batches[i]
                loop.train_step(run.train_model, sparsifier, run.optimizer, run.scaler, run.criterion,
                                inputs, targets, len(targets))

        steps(20)
        start = time.perf_counter()
        steps(args.steps)
        elapsed = (time.perf_counter() - start) / args.steps
        kernels = sparsifier.kernels.active if sparsifier.kernels is not None else []
        print(f"{name:12s} {elapsed * 1e3:7.2f} ms/step  (epoch {epoch}, {args.threads} thread(s), "
              f"sparse kernels on {sum(kernels)} of {len(kernels)} layers)", flush=True)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                steps(100)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
