"""Where a method's training step spends its time: ms per step and torch.profiler's operator table.

    python benchmarks/profile_step.py [--suite fashion-mnist-10] [--numerics portable|native] [--threads 1]
                                      [--steps 100] [--profile] [--kernels auto|dense] [--pair]
                                      [--examples N] [CASE ...]

Cases (default: all): dense, acdc-sparse (a compressed epoch), acdc-dense (a decompressed one),
gmp (after its pruning ramp), rigl and set (their masks as set up; an update step every dT), str
(from its start). ``--numerics`` pins the process as a run is pinned (default: the suite's). Each builds the run exactly as
``acdc-bench run`` does (``acdc_bench.run.loop.build_run``, the suite's matched configuration),
positions the method at the chosen epoch's start (AC/DC: that epoch's phase change run), then times ``train_step`` on that epoch's
batches. ``--examples 1`` trains each step on the first example of its batch only: the products
all but vanish and what is left is the step's fixed cost (Python, autograd, the optimizer, the
method's hooks), which no kernel removes. A diagnostic, not a benchmark: compare cases within one
invocation (the paired ratios are ``nox -s bench``'s).
"""

from __future__ import annotations

import argparse
import dataclasses
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
    "gmp": ("gmp", 0.95, 0.9),
    "rigl": ("rigl", 0.95, 0.5),
    "set": ("set", 0.95, 0.5),
    "str": ("str", 0.95, 0.5),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", choices=[[], *CASES], default=[])
    parser.add_argument("--suite", default="fashion-mnist-10")
    parser.add_argument("--numerics", choices=["portable", "native"], help="default: the suite's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--kernels", default="auto", choices=["auto", "dense"])
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's table (100 steps)")
    parser.add_argument("--sparsity", type=float, help="the target instead of the case's 0.95")
    parser.add_argument("--distribution", help="the masked methods' distribution instead of the suite's")
    parser.add_argument("--examples", type=int, help="train each step on the first N examples of its batch "
                        "(1: the step's fixed cost)")
    parser.add_argument("--pair", action="store_true",
                        help="time kernels auto against dense, one step of each in turn (the ratio to quote)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # read by every OpenMP runtime at its start
    from acdc_bench import config as suites
    from acdc_bench import numerics

    mode = args.numerics or suites.suite_numerics(args.suite)
    numerics.ensure(mode, reexec=True)  # pinned before torch starts, as a run is
    import torch

    torch.set_num_threads(args.threads)
    from acdc_bench.run import loop

    suite = suites.load_suite(args.suite, [f"numerics={mode}"])
    print(f"{mode} numerics ({numerics.active()} active), {numerics.cpu_model()}", flush=True)
    for name in args.cases or list(CASES):
        if args.pair:
            auto, dense = (_build(suites, loop, suite, name, mode, args.sparsity, args.distribution, args.examples)
                           for mode in ("auto", "dense"))
            for built in (auto, dense):
                _check_room(parser, built, args.steps)
                built.steps(20)
            times = {"auto": [], "dense": []}
            for _ in range(args.steps):  # interleaved: one step of each in turn
                for mode, built in (("auto", auto), ("dense", dense)):
                    start = time.perf_counter()
                    built.steps(1)
                    times[mode].append(time.perf_counter() - start)
            ratios = sorted(a / b for a, b in zip(times["auto"], times["dense"]))
            median = {mode: sorted(v)[len(v) // 2] * 1e3 for mode, v in times.items()}
            print(f"{name:12s} kernels auto {median['auto']:.2f} ms, dense {median['dense']:.2f} ms a step; "
                  f"median ratio of pairs {ratios[len(ratios) // 2]:.3f} ({args.steps} pairs, {args.threads} "
                  f"thread(s), sparse kernels on {sum(auto.active)} of {len(auto.active)} layers)", flush=True)
            continue
        built = _build(suites, loop, suite, name, args.kernels, args.sparsity, args.distribution, args.examples)
        _check_room(parser, built, args.steps + (100 if args.profile else 0))
        built.steps(20)
        start = time.perf_counter()
        built.steps(args.steps)
        elapsed = (time.perf_counter() - start) / args.steps
        print(f"{name:12s} {elapsed * 1e3:7.2f} ms/step  (epoch {built.epoch}, {args.threads} thread(s), "
              f"sparse kernels on {sum(built.active)} of {len(built.active)} layers)", flush=True)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                built.steps(100)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


class _Built:
    """One case's run, positioned at its epoch; ``steps(n)`` trains the epoch's next n batches."""

    def __init__(self, loop, run, epoch: int, examples: int | None = None):
        self.loop, self.run, self.epoch = loop, run, epoch
        self.batches = [(inputs[:examples], targets[:examples]) for inputs, targets in run.data.train_batches(epoch)]
        self.next = 0

    @property
    def active(self) -> list[bool]:
        kernels = self.run.sparsifier.kernels
        return kernels.active if kernels is not None else []

    def steps(self, n: int) -> None:
        run = self.run
        for _ in range(n):
            inputs, targets = self.batches[self.next]
            self.next += 1
            self.loop.train_step(run.train_model, run.sparsifier, run.optimizer, run.scaler, run.criterion,
                                 inputs, targets, len(targets))


def _build(suites, loop, suite, name: str, kernels: str, sparsity: float | None = None,
           distribution: str | None = None, examples: int | None = None) -> _Built:
    method, default_sparsity, fraction = CASES[name]
    sparsity = default_sparsity if sparsity is None or method == "dense" else sparsity
    if distribution is not None and method in ("acdc", "rigl"):
        suite = suite.for_cell(method, {"distribution": distribution})
    config = dataclasses.replace(suites.run_config(suite, method, sparsity, seed=0, budget={"mode": "paper"}),
                                 kernels=kernels)
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
    elif method == "gmp":  # seeking skips the pruning ramp: the masks of its end
        sparsifier.method.prune_by_magnitude(sparsifier.method.sparsity_at(epoch * per_epoch))
    run.train_model.train()
    return _Built(loop, run, epoch, examples)


def _check_room(parser, built: _Built, steps: int) -> None:
    if 20 + steps >= len(built.batches):
        parser.error(f"--steps {steps}: the timed steps must stay inside one epoch of {len(built.batches)} steps")


if __name__ == "__main__":
    sys.exit(main())
